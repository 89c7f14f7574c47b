"""`score shortform|longform` command line: JSON keys, readable table, clear errors."""
import json

from click.testing import CliRunner

from hpo_engine.metrics.cli import score
from hpo_engine.metrics.scoring import score_longform, score_shortform
from test_metrics_longform import make_talks
from test_metrics_shortform import _write_log


def test_shortform_json_and_table(tmp_path):
    hyp, refs = _write_log(tmp_path, 9)
    runner = CliRunner()
    result = runner.invoke(score, ["shortform", "--hypothesis", str(hyp), "--references", str(refs), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == score_shortform(str(hyp), str(refs))
    for key in ("BLEU", "chrF", "AL", "LAAL", "DAL", "AP", "AL_CA", "LAAL_CA", "YAAL", "YAAL_CA"):
        assert key in data
    table = runner.invoke(score, ["shortform", "--hypothesis", str(hyp), "--references", str(refs)])
    assert table.exit_code == 0
    assert table.output.splitlines()[0].split()[0] == "BLEU"
    assert f"{data['LAAL']:.4f}" in table.output


def test_shortform_char_unit_and_no_ref_len(tmp_path):
    hyp, refs = _write_log(tmp_path, 2, unit="char")
    result = CliRunner().invoke(score, ["shortform", "--hypothesis", str(hyp), "--references", str(refs),
                                        "--latency-unit", "char", "--lang", "zh", "--no-use-ref-len", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == score_shortform(str(hyp), str(refs), "char", "zh", use_ref_len=False)


def test_longform_both_segmenters(tmp_path):
    hyp, refs, segs = make_talks(tmp_path, 4)
    base = ["longform", "--hypothesis", str(hyp), "--references", str(refs), "--segmentation", str(segs),
            "--lang", "de", "--json"]
    runner = CliRunner()
    mwer = runner.invoke(score, base)
    assert mwer.exit_code == 0, mwer.output
    assert json.loads(mwer.output) == score_longform(str(hyp), str(refs), str(segs), "de")
    assert {"BLEU", "chrF", "StreamLAAL", "StreamLAAL_CA"} <= set(json.loads(mwer.output))
    soft = runner.invoke(score, base + ["--segmenter", "soft", "--no-moses"])
    assert soft.exit_code == 0, soft.output
    assert {"BLEU", "chrF", "LongYAAL", "LongYAAL_CA"} <= set(json.loads(soft.output))


def test_errors_are_reported_not_raised(tmp_path):
    hyp, refs = _write_log(tmp_path, 1)
    hyp.write_text(hyp.read_text() + "{broken\n")
    result = CliRunner().invoke(score, ["shortform", "--hypothesis", str(hyp), "--references", str(refs)])
    assert result.exit_code != 0
    assert "line 81: invalid JSON" in result.output
    missing = CliRunner().invoke(score, ["longform", "--hypothesis", str(hyp), "--references", str(refs),
                                         "--segmentation", str(tmp_path / "nope.yaml"), "--lang", "de"])
    assert missing.exit_code != 0 and "nope.yaml" in missing.output


def test_longform_iwslt2026_report(tmp_path):
    """--iwslt2026 = OmniSTEval's soft flow (quality + LongYAAL) + mWER StreamLAAL + the regime by LongYAAL."""
    from hpo_engine.metrics.scoring import latency_regime

    hyp, refs, segs = make_talks(tmp_path, 5)
    base = ["longform", "--hypothesis", str(hyp), "--references", str(refs), "--segmentation", str(segs),
            "--lang", "de"]
    runner = CliRunner()
    result = runner.invoke(score, base + ["--iwslt2026", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    soft = score_longform(str(hyp), str(refs), str(segs), "de", segmenter="soft")
    mwer = score_longform(str(hyp), str(refs), str(segs), "de")
    for key in ("BLEU", "chrF", "LongYAAL", "LongYAAL_CA"):
        assert data[key] == soft[key], key
    for key in ("StreamLAAL", "StreamLAAL_CA"):
        assert data[key] == mwer[key], key
    assert data["latency_regime"] == latency_regime(soft["LongYAAL"])
    assert data["latency_regime_CA"] == latency_regime(soft["LongYAAL_CA"])
    table = runner.invoke(score, base + ["--iwslt2026"])
    assert table.exit_code == 0 and "IWSLT 2026" in table.output.splitlines()[0]
    assert data["latency_regime"] in table.output and f"{data['LongYAAL']:.4f}" in table.output
    misuse = runner.invoke(score, base + ["--sources", str(refs)])
    assert misuse.exit_code != 0 and "--iwslt2026" in misuse.output


def test_latency_regimes_of_the_track():
    from hpo_engine.metrics.scoring import latency_regime

    assert latency_regime(0.0) == latency_regime(1999.0) == latency_regime(2000.0) == "low latency (0-2 s)"
    assert latency_regime(2000.5) == latency_regime(4000.0) == "high latency (2-4 s)"
    assert latency_regime(4000.5).startswith("outside") and latency_regime(None).startswith("none")


def test_iwslt2026_comet_scores_the_soft_resegmented_sentences(tmp_path, monkeypatch):
    """With a COMET checkpoint: the model scores each resegmented sentence against its reference and
    source; the report is the mean x 100 (a stand-in model here: COMET's own package is optional)."""
    import hpo_engine.metrics.neural as neural
    from hpo_engine.metrics.scoring import score_iwslt2026

    hyp, refs, segs = make_talks(tmp_path, 6)
    n = len(refs.read_text().splitlines())
    sources = tmp_path / "src.txt"
    sources.write_text("".join(f"source {i}\n" for i in range(n)))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"stand-in")
    seen = {}

    class StandIn:
        def __init__(self, path, gpus=0):
            seen["path"] = path

        def score(self, hypotheses, references, srcs):
            seen.update(hyps=list(hypotheses), refs=list(references), srcs=list(srcs))
            return [len(h) / (len(h) + len(r) + 1) for h, r in zip(hypotheses, references)]

    monkeypatch.setattr(neural, "CometScorer", StandIn)
    data = score_iwslt2026(str(hyp), str(refs), str(segs), "de", comet_path=str(ckpt), sources=str(sources))
    assert seen["path"] == str(ckpt) and seen["refs"] == refs.read_text().splitlines()
    assert seen["srcs"] == [f"source {i}" for i in range(n)]
    expected = [len(h) / (len(h) + len(r) + 1) for h, r in zip(seen["hyps"], seen["refs"])]
    assert abs(data["COMET"] - 100 * sum(expected) / n) < 1e-9
    sources.write_text("only one line\n")
    import pytest
    with pytest.raises(ValueError, match="one source per reference"):
        score_iwslt2026(str(hyp), str(refs), str(segs), "de", comet_path=str(ckpt), sources=str(sources))
