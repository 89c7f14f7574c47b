"""Metrics benchmarks (pytest-benchmark): long-form scoring of a synthetic 1-hour talk.

Run:    .venv/bin/python -m pytest -q bench/bench_metrics.py --benchmark-only \
            --benchmark-columns=min,median,rounds --benchmark-json=/tmp/metrics.json
Ratios: .venv/bin/python bench/bench_metrics.py /tmp/metrics.json

Talk: 600 reference sentences (~10k words) over ~58 min; one hypothesis of ~9.5k words with
substitutions / deletions, delays spread over the talk and SimulEval-style cumulative elapsed.
group "streamlaal_1h": BLEU + StreamLAAL + StreamLAAL_CA from the files:
  ours        hpo_engine.metrics (C++ anti-diagonal mWER DP, C++ BLEU statistics)
  composition mweralign (MWERAlign C++) + SimulEval's LAAL / SacreBLEU scorers, StreamLAAL's
              re-basing of delays in Python (what the StreamLAAL script does)
group "soft": BLEU + chrF + LongYAAL (+CA) with OmniSTEval's SoftSegmenter, no Moses:
  ours vs `omnisteval longform` (its Python DP is quadratic in time and memory, so this group uses
  a 10-minute talk by default; HPO_BENCH_SOFT_MINUTES=60 runs the full hour, one round).
Both sides must give identical numbers; the benchmark asserts it.
"""
import json
import os
import random
import sys
from pathlib import Path

import pytest
import yaml

QUALITY = ("BLEU",)


def write_talk(folder: Path, sentences: int, seed: int = 0):
    """refs.txt, segs.yaml, instances.log of one synthetic talk; returns their paths."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzäöü") for _ in range(rng.randint(2, 10)))
             for _ in range(4000)]
    refs, segs, hyp, delays, elapsed = [], [], [], [], []
    t, compute = 0.0, 0.0
    for _ in range(sentences):
        words = [rng.choice(vocab) for _ in range(rng.randint(6, 28))]
        words[0] = words[0].capitalize()
        refs.append(" ".join(words) + ".")
        duration = rng.uniform(3, 8)
        segs.append({"wav": "talk.wav", "offset": round(t, 3), "duration": round(duration, 3)})
        emit = t * 1000
        for w in words:
            x = rng.random()
            if x < 0.08:
                continue
            emit += rng.uniform(0, 600)
            hyp.append(rng.choice(vocab) if x < 0.25 else w)
            delays.append(round(emit, 1))
            compute += rng.uniform(0, 40)
            elapsed.append(round(emit + compute, 1))
        hyp[-1] += "."
        t += duration + rng.uniform(0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs.txt").write_text("".join(r + "\n" for r in refs), encoding="utf-8")
    (folder / "segs.yaml").write_text(yaml.safe_dump(segs), encoding="utf-8")
    (folder / "instances.log").write_text(json.dumps(
        {"index": 0, "source": ["talk.wav"], "prediction": " ".join(hyp), "delays": delays,
         "elapsed": elapsed, "source_length": t * 1000}) + "\n", encoding="utf-8")
    return folder / "instances.log", folder / "refs.txt", folder / "segs.yaml"


@pytest.fixture(scope="module")
def talk_1h(tmp_path_factory):
    return write_talk(tmp_path_factory.mktemp("talk1h"), 600)


@pytest.fixture(scope="module")
def talk_soft(tmp_path_factory):
    minutes = int(os.environ.get("HPO_BENCH_SOFT_MINUTES", "10"))
    return write_talk(tmp_path_factory.mktemp("talksoft"), 600 * minutes // 60, seed=1)


def ours_streamlaal(hyp, refs, segs):
    from hpo_engine.metrics.scoring import score_longform
    return score_longform(str(hyp), str(refs), str(segs), "de", "mwer", "word", "13a", quality=QUALITY)


class _LogInstance:
    """What SimulEval's scorers read from an instance (as the StreamLAAL script builds it)."""

    def __init__(self, prediction, reference, source_length, delays, elapsed):
        self.prediction, self.reference, self.source_length = prediction, reference, source_length
        self.delays, self.elapsed = delays, elapsed
        self.metrics = {}

    @property
    def reference_length(self):
        return len(self.reference.split(" "))


def composition_streamlaal(hyp, refs, segs):
    import mweralign
    from simuleval.evaluator.scorers.latency_scorer import LAALScorer
    from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer

    from hpo_engine.metrics.streamlaal import DelayRebaser  # the script's re-basing, in Python

    log = [json.loads(line) for line in open(hyp, encoding="utf-8")]
    references = [line.strip() for line in open(refs, encoding="utf-8")]
    definitions = yaml.load(open(segs, encoding="utf-8"), Loader=yaml.CSafeLoader)
    instances = {}
    for line in log:
        wav = os.path.basename(line["source"][0])
        idx = [i for i, d in enumerate(definitions) if os.path.basename(d["wav"]) == wav]
        out = mweralign.align_texts("".join(references[i] + "\n" for i in idx), line["prediction"])
        rebase = DelayRebaser(line["delays"], line["elapsed"], "word")
        for i, piece in zip(idx, out.split("\n")):
            piece = piece.strip()
            d, e = rebase(piece, definitions[i]["offset"] * 1000) if piece else ([], [])
            instances[len(instances)] = _LogInstance(piece, references[i],
                                                     definitions[i]["duration"] * 1000, d, e)
    return {"BLEU": SacreBLEUScorer("13a")(instances), "StreamLAAL": LAALScorer()(instances),
            "StreamLAAL_CA": LAALScorer(computation_aware=True)(instances)}


@pytest.mark.benchmark(group="streamlaal_1h")
def test_streamlaal_ours(benchmark, talk_1h):
    result = benchmark.pedantic(ours_streamlaal, args=talk_1h, rounds=15, iterations=1, warmup_rounds=1)
    assert result == composition_streamlaal(*talk_1h)


@pytest.mark.benchmark(group="streamlaal_1h")
def test_streamlaal_composition(benchmark, talk_1h):
    benchmark.pedantic(composition_streamlaal, args=talk_1h, rounds=5, iterations=1)


def ours_soft(hyp, refs, segs):
    from hpo_engine.metrics.scoring import score_longform
    return score_longform(str(hyp), str(refs), str(segs), "de", "soft", "word", "13a", moses=False,
                          quality=("BLEU", "chrF"))


def omnisteval_soft(hyp, refs, segs):
    from omnisteval.io import load_resegmentation_inputs
    from omnisteval.resegment import resegment
    from omnisteval.scoring import evaluate_instances

    inputs = load_resegmentation_inputs(str(segs), None, str(refs), str(hyp), "jsonl", False, False,
                                        False, "delays", "elapsed")
    instances, _ = resegment(*inputs, char_level=False, lang=None)
    scores, _, _ = evaluate_instances(instances, is_longform=True, bleu_tokenizer="13a")
    return {"BLEU": scores["bleu"], "chrF": scores["chrf"], "LongYAAL": scores["long_yaal"],
            "LongYAAL_CA": scores["ca_long_yaal"]}


_OMNISTEVAL_RESULT = {}


@pytest.mark.benchmark(group="soft")
def test_soft_omnisteval(benchmark, talk_soft):
    _OMNISTEVAL_RESULT["soft"] = benchmark.pedantic(omnisteval_soft, args=talk_soft, rounds=1, iterations=1)


@pytest.mark.benchmark(group="soft")
def test_soft_ours(benchmark, talk_soft):
    result = benchmark(ours_soft, *talk_soft)
    expected = _OMNISTEVAL_RESULT.get("soft") or omnisteval_soft(*talk_soft)
    assert result == expected


def _ratios(path):
    """Print baseline / ours of the median times, per group."""
    data = json.load(open(path))
    by = {b["name"]: b["stats"] for b in data["benchmarks"]}
    for ours, base in (("test_streamlaal_ours", "test_streamlaal_composition"),
                       ("test_soft_ours", "test_soft_omnisteval")):
        if ours in by and base in by:
            print(f"{base}: {by[base]['median']:.3f} s  {ours}: {by[ours]['median']:.4f} s  "
                  f"speed-up (median) {by[base]['median'] / by[ours]['median']:.1f}x  "
                  f"(min) {by[base]['min'] / by[ours]['min']:.1f}x")


if __name__ == "__main__":
    _ratios(sys.argv[1])
