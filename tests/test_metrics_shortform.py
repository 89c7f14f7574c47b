"""`score_shortform` against SimulEval's scorers and OmniSTEval shortform (YAAL), and the log
reader's errors."""
import json
import random

import pytest

from hpo_engine.metrics.instances import MetricsInputError
from hpo_engine.metrics.scoring import score_shortform
from hpo_engine.metrics.yaal import yaal


def _write_log(tmp_path, seed, unit="word", n=80, with_reference=False):
    rng = random.Random(seed)
    vocab = list("我们在两个数据集上训练了模型") if unit == "char" else \
        "the house is green and the cat ran away quickly".split()
    lines, refs = [], []
    for i in range(n):
        src = rng.uniform(500, 9000)
        k = rng.choice([0, 1, rng.randint(2, 25)])
        units = [rng.choice(vocab) for _ in range(k)]
        t, delays, elapsed, acc = 0.0, [], [], 0.0
        for _ in units:
            t += rng.choice([0.0, rng.uniform(0, src / 3)])
            delays.append(t)
            acc += rng.uniform(0, 200)
            elapsed.append(t + acc)
        ref = ("" if unit == "char" else " ").join(rng.choice(vocab) for _ in range(rng.randint(1, 20)))
        refs.append(ref)
        line = {"index": i, "prediction": ("" if unit == "char" else " ").join(units),
                "delays": delays, "elapsed": elapsed, "source_length": src}
        if with_reference:
            line["reference"] = ref
        lines.append(json.dumps(line, ensure_ascii=False))
    (tmp_path / "instances.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    return tmp_path / "instances.log", tmp_path / "refs.txt"


@pytest.mark.parametrize("unit", ["word", "char"])
def test_shortform_matches_simuleval_and_omnisteval(tmp_path, unit):
    pytest.importorskip("omnisteval")
    pytest.importorskip("simuleval")
    from omnisteval.io import load_shortform_instances
    from omnisteval.scoring import evaluate_instances
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.latency_scorer import LATENCY_SCORERS_DICT
    from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer

    hyp, refs = _write_log(tmp_path, 3, unit, with_reference=True)
    tok = "zh" if unit == "char" else "13a"
    ours = score_shortform(str(hyp), None, unit, tok)
    simuleval_instances = {i: LogInstance(line, unit) for i, line in enumerate(open(hyp, encoding="utf-8"))}
    assert ours["BLEU"] == SacreBLEUScorer(tok)(simuleval_instances)
    for metric in ("AL", "LAAL", "DAL", "AP"):
        assert ours[metric] == pytest.approx(LATENCY_SCORERS_DICT[metric]()(simuleval_instances), abs=1e-9)
        assert ours[metric + "_CA"] == pytest.approx(
            LATENCY_SCORERS_DICT[metric](computation_aware=True)(simuleval_instances), abs=1e-9)
    omni = load_shortform_instances(str(hyp), str(refs), "delays", "elapsed", char_level=unit == "char")
    theirs, _, _ = evaluate_instances(omni, is_longform=False, bleu_tokenizer=tok)
    assert ours["YAAL"] == pytest.approx(theirs["yaal"], abs=1e-9)
    assert ours["YAAL_CA"] == pytest.approx(theirs["ca_yaal"], abs=1e-9)
    assert ours["chrF"] == pytest.approx(theirs["chrf"], abs=1e-9)


def test_references_file_overrides_log_and_counts_must_match(tmp_path):
    hyp, refs = _write_log(tmp_path, 4)
    with pytest.raises(MetricsInputError, match="missing field 'reference'"):
        score_shortform(str(hyp))
    with_file = score_shortform(str(hyp), str(refs))
    assert set(with_file) >= {"BLEU", "chrF", "TER", "AL", "LAAL", "DAL", "AP", "AL_CA", "YAAL", "YAAL_CA"}
    refs.write_text("only one line\n")
    with pytest.raises(MetricsInputError, match="1 references but 80 hypothesis lines"):
        score_shortform(str(hyp), str(refs))


@pytest.mark.parametrize("content, message", [
    ('{"prediction": "a", "delays": [1]\n', "line 1: invalid JSON"),
    ('{"prediction": "a", "delays": [1], "source_length": 5, "reference": "a"}\n[1, 2]\n',
     "line 2: expected a JSON object"),
    ('\n{"delays": [1], "source_length": 5}\n', "line 2: missing field 'prediction'"),
    ('{"prediction": "a", "delays": ["x"], "source_length": 5, "reference": "a"}\n',
     "line 1: field 'delays' must be a list of finite numbers"),
    ('{"prediction": "a b", "delays": [1, 2], "elapsed": [3], "source_length": 5, "reference": "a"}\n',
     "line 1: 1 elapsed values but 2 delays"),
    ('{"prediction": "a", "delays": [1], "reference": "a"}\n', "line 1: missing field 'source_length'"),
    ("", "no instances"),
])
def test_malformed_logs_name_the_line(tmp_path, content, message):
    path = tmp_path / "instances.log"
    path.write_text(content)
    with pytest.raises(MetricsInputError, match=message):
        score_shortform(str(path))


def test_yaal_by_hand():
    # 4 words, reference of 2, source 4000 ms: gamma = 4 / 4000; the 4th emission is at the end
    assert yaal([1000.0, 1500.0, 2000.0, 4000.0], 4000.0, 2) == pytest.approx(
        ((1000 - 0) + (1500 - 1000) + (2000 - 2000)) / 3)
    # long-form keeps emissions past the segment end, up to the end of the recording
    assert yaal([1000.0, 5000.0, 9000.0], 4000.0, 3, is_longform=True, time_to_recording_end=8000.0) \
        == pytest.approx(((1000 - 0) + (5000 - 4000 / 3)) / 2)
    assert yaal([4000.0], 4000.0, 1) is None
    assert yaal([], 4000.0, 1) is None
