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
