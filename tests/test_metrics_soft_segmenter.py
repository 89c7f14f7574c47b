"""SoftSegmenter alignment and sentence assignment against OmniSTEval 0.1.10."""
import random

import pytest

from hpo_engine.metrics.soft_segmenter import Unit, align, soft_segment, tokenize_units

omni_alignment = pytest.importorskip("omnisteval.alignment")
omni_tokenization = pytest.importorskip("omnisteval.tokenization")

WORDS = ["the", "then", "house", "houses", "hose", "green", "über", "uber", "straße", ".", ",", "?",
         "!", "-", "(", "a", "an", "and", "cat", "cats", "act", "猫", "ー"]
CHARS = list("我们在两个数据集上训练了模型结果，。！？") + ["a", " "]


def _theirs(ref, hyp, char_level):
    words_r = [omni_alignment.Word(u.text, seq_id=u.seq_id) for u in ref]
    words_h = [omni_alignment.Word(u.text, main=u.main) for u in hyp]
    # Word is a dataclass (equal by value): look positions up by identity
    pos_r = {id(w): k for k, w in enumerate(words_r)}
    pos_h = {id(w): k for k, w in enumerate(words_h)}
    aligned_r, aligned_h = omni_alignment.align_sequences(words_r, words_h, char_level)
    path = [(None if r is None else pos_r[id(r)], None if h is None else pos_h[id(h)])
            for r, h in zip(aligned_r, aligned_h)]
    assigned = omni_alignment.process_alignment(aligned_r, aligned_h, char_level)
    return path, [(pos_h[id(w)], w.seq_id) for w in assigned if w.main]


def _random_case(rng, vocab, char_level):
    ref, hyp = [], []
    for s in range(rng.randint(1, 6)):
        for _ in range(rng.randint(0, 12)):
            ref.append(Unit(rng.choice(vocab), seq_id=s))
    for u in ref:
        x = rng.random()
        if x < 0.15:
            continue
        hyp.append(Unit(rng.choice(vocab) if x < 0.35 else u.text, main=rng.random() > 0.1))
        if rng.random() < 0.1:
            hyp.append(Unit(rng.choice(vocab)))
    if not ref:
        ref.append(Unit(rng.choice(vocab), seq_id=0))
    return ref, hyp


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("char_level", [False, True])
def test_alignment_and_assignment_match_omnisteval(seed, char_level):
    rng = random.Random(seed * 2 + char_level)
    ref, hyp = _random_case(rng, CHARS if char_level else WORDS, char_level)
    expected_path, expected_assigned = _theirs(ref, hyp, char_level)
    path = align(ref, hyp, char_level)
    assert path == expected_path
    if not hyp:
        assert soft_segment(ref, hyp, char_level) == []
        return
    got = soft_segment(ref, hyp, char_level)
    assert [(next(k for k, h in enumerate(hyp) if h is u), u.seq_id) for u in got] == expected_assigned


def test_many_distinct_characters_use_wide_masks():
    # more than 64 distinct characters: the bit masks span several 64-bit words
    rng = random.Random(3)
    alphabet = [chr(0x4E00 + i) for i in range(300)] + list("abcdefghij")
    vocab = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(80)]
    ref, hyp = _random_case(rng, vocab, False)
    assert align(ref, hyp, False) == _theirs(ref, hyp, False)[0]


@pytest.mark.parametrize("lang", [None, "zh"])
def test_tokenization_without_moses_matches(lang):
    texts = ["Hello,", "WORLD", "ｆｕｌｌ", "Straße", "ﬁne"]
    ours = tokenize_units([Unit(t, seq_id=1, emission_cu=5.0) for t in texts], lang)
    theirs = omni_tokenization.tokenize_words(
        [[omni_alignment.Word(t, seq_id=1, emission_cu=5.0) for t in texts]], lang)[0]
    assert [(u.text, u.main, u.original, u.seq_id, u.emission_cu) for u in ours] == \
        [(w.text, w.main, w.original, w.seq_id, w.emission_cu) for w in theirs]


def test_moses_tokenization_matches_mosestokenizer():
    pytest.importorskip("mosestokenizer")
    import shutil
    if shutil.which("perl") is None:
        pytest.skip("perl not available")
    texts = ["Hello,", "world!", "don't", "U.S.", "(yes)", "3.5%", "e-mail", "Straße.", "l'homme"]
    ours = tokenize_units([Unit(t) for t in texts], "en")
    theirs = omni_tokenization.tokenize_words([[omni_alignment.Word(t) for t in texts]], "en")[0]
    assert [(u.text, u.main, u.original) for u in ours] == [(w.text, w.main, w.original) for w in theirs]


@pytest.mark.parametrize("width", [0, 1, 2, 3])
def test_vectorised_and_portable_soft_dp_agree(width):
    from hpo_engine import _C

    rng = random.Random(width)
    for _ in range(30):
        n, m = rng.randint(0, 70), rng.randint(0, 70)
        w = max(width, 1)
        def side(k):
            tokens = [rng.randint(0, 6) for _ in range(k)]
            punct = [1 if t == 0 else 0 for t in tokens]  # the same text gets the same features
            masks = [[rng.getrandbits(64) for _ in range(w)] for _ in range(7)]
            return tokens, punct, [x for t in tokens for x in masks[t]] if width else []
        rt, rp, rm = side(n)
        ht, hp, hm = side(m)
        args = (rt, rp, rm, ht, hp, hm, width, width == 0)
        assert _C.soft_align(*args, max_simd=0) == _C.soft_align(*args)
