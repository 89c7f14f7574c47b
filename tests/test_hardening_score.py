"""`hpo-engine score` with inconsistent logs: an error naming the line and the field, never a score;
`--json` output is strict JSON (non-finite scores are null, with a warning on stderr)."""
import json

import pytest
from click.testing import CliRunner

from hpo_engine.metrics.cli import score

GOOD = {"index": 0, "prediction": "das ist gut", "delays": [500, 900, 1200], "elapsed": [600, 1000, 1400],
        "source_length": 1500, "reference": "das ist gut"}


def shortform(tmp_path, *lines, args=()):
    log = tmp_path / "instances.log"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return CliRunner().invoke(score, ["shortform", "--hypothesis", str(log), *args])


@pytest.mark.parametrize("change, message", [
    ({"delays": [500, 900], "elapsed": [600, 1000]}, "line 2: 3 words in the prediction but 2 delays"),
    ({"delays": [500, 900, 1200, 1300], "elapsed": [1] * 4}, "line 2: 3 words in the prediction but 4 delays"),
    ({"source_length": -1500}, "line 2: field 'source_length' must be a finite number >= 0"),
    ({"delays": [500, -900, 1200]}, "line 2: field 'delays' holds a negative time"),
    ({"elapsed": [600, -1, 1400]}, "line 2: field 'elapsed' holds a negative time"),
    ({"delays": [500, 1200, 900]}, "line 2: field 'delays' decreases at position 2 (900 after 1200)"),
])
def test_inconsistent_log_lines_are_errors_naming_line_and_field(tmp_path, change, message):
    bad = {**GOOD, "index": 1, **change}
    result = shortform(tmp_path, GOOD, bad, args=["--json"])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_char_unit_counts_characters(tmp_path):
    # three delays for "das ist gut" are right in words, wrong in characters
    result = shortform(tmp_path, GOOD, args=["--latency-unit", "char"])
    assert result.exit_code == 1 and "11 chars in the prediction but 3 delays" in result.output


def test_json_output_is_strict_json_with_a_warning_for_non_finite_scores(tmp_path):
    # a vanishing source length makes AP overflow to infinity; YAAL_CA has no defined value here
    tiny = {**GOOD, "source_length": 1e-310, "delays": [0, 0, 5], "elapsed": [1, 2, 6]}
    result = shortform(tmp_path, tiny, args=["--json"])
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    data = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert data["AP"] is None and data["AP_CA"] is None and isinstance(data["AL"], float)
    assert "warning: not finite, written as null: " in err and "AP (inf)" in err
    assert "Infinity" not in out and "NaN" not in out
