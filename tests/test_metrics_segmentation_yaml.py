"""The fast segmentation YAML reader gives PyYAML's result, or declines."""
import random

import pytest
import yaml

from hpo_engine.metrics.instances import MetricsInputError, read_segmentation
from hpo_engine.metrics.segmentation_yaml import parse_segmentation


def _random_segments(rng):
    names = ["ted_1.wav", "talks/rec0.wav", "a-b_c.WAV", "x"]
    return [{"duration": rng.choice([round(rng.uniform(0, 20), rng.randint(0, 6)), rng.randint(0, 30)]),
             "offset": round(rng.uniform(0, 4000), 3), "speaker_id": f"spk.{rng.randint(0, 9)}",
             "wav": rng.choice(names)} for _ in range(rng.randint(1, 40))]


@pytest.mark.parametrize("seed", range(10))
def test_block_and_flow_styles_equal_pyyaml(seed):
    rng = random.Random(seed)
    segments = _random_segments(rng)
    for flow in (False, True):
        text = yaml.safe_dump(segments, default_flow_style=None if flow else False, width=10000)
        parsed = parse_segmentation(text)
        assert parsed is not None, text[:200]
        assert parsed == yaml.safe_load(text)
        assert [type(e["duration"]) for e in parsed] == [type(e["duration"]) for e in yaml.safe_load(text)]


@pytest.mark.parametrize("text", [
    "- {wav: 'quoted.wav', offset: 1.0, duration: 2.0}\n",
    "- {wav: null, offset: 1.0, duration: 2.0}\n",
    "- {wav: a.wav, offset: 1e3, duration: 2.0}\n",
    "- {wav: a.wav, offset: 012, duration: 2.0}\n",
    "segments:\n  - wav: a.wav\n",
    "[{wav: a.wav, offset: 1.0, duration: 2.0}]\n",
])
def test_unusual_yaml_falls_back_to_pyyaml(text, tmp_path):
    assert parse_segmentation(text) is None
    path = tmp_path / "segs.yaml"
    path.write_text(text)
    data = yaml.safe_load(text)
    numeric = isinstance(data, list) and all(
        isinstance(d, dict) and {"wav", "offset", "duration"} <= set(d)
        and all(isinstance(d[k], (int, float)) for k in ("offset", "duration")) for d in data)
    if numeric:
        assert [(s.wav, s.offset, s.duration) for s in read_segmentation(path)] == \
            [(str(d["wav"]), d["offset"], d["duration"]) for d in data]
    else:
        with pytest.raises(MetricsInputError):
            read_segmentation(path)


def test_missing_field_and_invalid_yaml(tmp_path):
    path = tmp_path / "segs.yaml"
    path.write_text("- {wav: a.wav, offset: 1.0}\n")
    with pytest.raises(MetricsInputError, match="segment 0 is missing field 'duration'"):
        read_segmentation(path)
    path.write_text("- {wav: a.wav, offset: soon, duration: 2.0}\n")
    with pytest.raises(MetricsInputError, match="segment 0 field 'offset' must be a number"):
        read_segmentation(path)
    path.write_text("- {wav: a.wav, offset: [1.0\n")
    with pytest.raises(MetricsInputError, match="invalid YAML"):
        read_segmentation(path)
