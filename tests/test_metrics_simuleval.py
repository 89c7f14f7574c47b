"""AL / LAAL / DAL / AP (and computation-aware variants) against SimulEval 1.1.4's own scorers."""
import json
import random

import pytest

from hpo_engine.metrics.simuleval_latency import LATENCY_METRICS, corpus_latency, sentence_latency

simuleval_scorers = pytest.importorskip("simuleval.evaluator.scorers.latency_scorer")
from simuleval.evaluator.instance import LogInstance  # noqa: E402

WORDS = "the a house of green is ran quickly über straße 猫 , . ?".split()


class _Ins:
    def __init__(self, d):
        self.delays = d.get("delays")
        self.elapsed = d.get("elapsed")
        self.source_length = d["source_length"]
        self.reference = d.get("reference")


def _random_record(rng, index, unit="word"):
    src = rng.choice([rng.uniform(300, 20000), float(rng.randint(1, 50) * 320)])
    n = rng.choice([0, 1, 1, 2, rng.randint(3, 40)])
    t, delays = 0.0, []
    for _ in range(n):
        t += rng.choice([0.0, 0.0, rng.uniform(0, src / 4), 320.0])
        delays.append(round(t, rng.choice([0, 3])) if rng.random() < 0.5 else t)
    if delays and rng.random() < 0.2:  # delays past the source end
        delays = [d + src for d in delays]
    elapsed = []
    acc = 0.0
    for d in delays:
        acc += rng.uniform(0, 300)
        elapsed.append(d + acc)
    # a char-level reference of length 0 divides by zero in SimulEval (tested separately)
    ref_len = rng.choice([0 if unit == "word" else 1, 1, rng.randint(1, 50)])
    reference = " ".join(rng.choice(WORDS) for _ in range(ref_len))
    if rng.random() < 0.1:
        reference = "  " + reference + "  with  double  spaces "
    return {"index": index, "prediction": " ".join(rng.choice(WORDS) for _ in delays),
            "delays": delays, "elapsed": elapsed, "source_length": src, "reference": reference}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("unit", ["word", "char"])
@pytest.mark.parametrize("use_ref_len", [True, False])
def test_corpus_scores_match_simuleval(seed, unit, use_ref_len):
    rng = random.Random(1000 * seed + (unit == "char") * 7 + use_ref_len)
    records = [_random_record(rng, i, unit) for i in range(150)]
    theirs_instances = {i: LogInstance(json.dumps(r), unit) for i, r in enumerate(records)}
    ours_instances = [_Ins(r) for r in records]
    for metric in LATENCY_METRICS:
        for ca in (False, True):
            scorer = simuleval_scorers.LATENCY_SCORERS_DICT[metric](
                computation_aware=ca, use_ref_len=use_ref_len)
            expected = scorer(theirs_instances)
            got = corpus_latency(metric, ours_instances, unit, ca, use_ref_len)
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-9), (metric, ca)


@pytest.mark.parametrize("metric", LATENCY_METRICS)
def test_edge_cases_match_simuleval(metric):
    cases = [
        {"delays": [500.0], "source_length": 1000.0, "reference": "one"},  # one word
        {"delays": [1500.0, 1600.0], "source_length": 1000.0, "reference": "a b"},  # past the end
        {"delays": [1000.0, 1000.0, 1000.0], "source_length": 1000.0, "reference": "a b c d"},
        {"delays": [0, 0, 0], "source_length": 320, "reference": ""},  # ints, empty reference
        {"delays": [10.0, 20.0, 5000.0, 6000.0], "source_length": 4000.0, "reference": "x"},
    ]
    for case in cases:
        ins = LogInstance(json.dumps({"index": 0, "prediction": "p", **case}), "word")
        expected = simuleval_scorers.LATENCY_SCORERS_DICT[metric]().compute(ins)
        got = sentence_latency(metric, case["delays"], case["source_length"], case["reference"])
        assert got == expected


def test_hand_computed_al():
    # AL with |X| = 3000 ms, |Y| = 3: gamma = 1/1000; d = 1000, 2000, 3000 -> lags 1000, 1000, 1000
    assert sentence_latency("AL", [1000.0, 2000.0, 3000.0], 3000.0, "a b c") == 1000.0
    # LAAL uses max(|Y|, |Y*|) = 6 with a 3-word reference and 6 delays: stops at the first d >= |X|
    laal = sentence_latency("LAAL", [0, 0, 0, 3000, 3000, 3000], 3000.0, "a b c")
    assert laal == pytest.approx((0 + (0 - 500) + (0 - 1000) + (3000 - 1500)) / 4)


def test_instances_without_delays_are_skipped_and_all_empty_raises():
    ins = [_Ins({"delays": [], "source_length": 1.0, "reference": "a"}),
           _Ins({"delays": [2.0], "source_length": 4.0, "reference": "a"})]
    assert corpus_latency("AL", ins) == 2.0
    with pytest.raises(ValueError, match="no instance"):
        corpus_latency("AL", ins[:1])
    with pytest.raises(ValueError, match="unknown latency metric"):
        sentence_latency("XYZ", [1.0], 1.0, "a")


def test_zero_reference_length_is_a_clear_error():
    ins = [_Ins({"delays": [0.0, 1.0], "source_length": 4.0, "reference": "  "})]
    with pytest.raises(ValueError, match="reference length 0 in chars"):
        corpus_latency("AL", ins, unit="char")
