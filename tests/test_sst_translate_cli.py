"""`hpo-engine translate`: SimulEval-style instances.log that `hpo-engine score` can read."""
import json

import pytest
import soundfile as sf
from click.testing import CliRunner

from hpo_engine.metrics.instances import read_instances_log
from hpo_engine.sst.cli import translate
from test_sst_helpers import default_is_trained, espeak_wave, one_thread  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]   # slow: make test-fast leaves these out


def test_translate_writes_simuleval_instances(tmp_path):
    waves = [espeak_wave("The weather is nice."), espeak_wave("Thank you very much.")]
    paths = []
    for i, w in enumerate(waves):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], w, 16000) if i == 0 else sf.write(paths[-1], w[::2], 8000)   # any rate
    refs = tmp_path / "refs.txt"
    refs.write_text("Das Wetter ist schön.\nVielen Dank.\n")
    out = tmp_path / "instances.log"
    result = CliRunner().invoke(translate, [*paths, "--output", str(out), "--references", str(refs),
                                            "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert ("untrained" in result.output) is not default_is_trained()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    parsed = read_instances_log(out)
    assert [r.index for r in parsed] == [0, 1]
    assert [r["reference"] for r in rows] == ["Das Wetter ist schön.", "Vielen Dank."]
    for row, wave in zip(rows, waves):
        assert abs(row["source_length"] - len(wave) / 16) <= 1.0       # ms (the 8 kHz file is resampled)
        units = row["prediction"].split()
        assert len(row["delays"]) == len(row["elapsed"]) == len(units)
        assert row["delays"] == sorted(row["delays"])
        assert all(0 < d <= row["source_length"] for d in row["delays"])
        assert all(e >= d for e, d in zip(row["elapsed"], row["delays"]))


def test_translate_rejects_mismatched_references(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, espeak_wave("Hello."), 16000)
    refs = tmp_path / "refs.txt"
    refs.write_text("eins\nzwei\n")
    result = CliRunner().invoke(translate, [str(wav), "-o", str(tmp_path / "o.log"), "--references", str(refs)])
    assert result.exit_code == 2 and "2 lines for 1 audio file" in result.output


def test_chunk_multiplier_writes_at_multiples_of_the_longer_chunk(tmp_path):
    wav = tmp_path / "a.wav"
    wave = espeak_wave("The weather is nice today and tomorrow it will rain again. "
                       "We stay at home and read a good book by the fire, and later we cook a warm soup.")  # ~8 s
    sf.write(wav, wave, 16000)
    out = tmp_path / "o.log"
    result = CliRunner().invoke(translate, [str(wav), "-o", str(out), "--max-new-tokens", "2", "-m", "3"])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    chunk = 3 * 1120
    assert row["source_length"] > 2 * chunk and row["delays"]
    # every unit is emitted when a 3.36 s chunk completes (or at the end of the audio)
    assert all(d % chunk == 0 or d == pytest.approx(row["source_length"], abs=1) for d in row["delays"])
    result = CliRunner().invoke(translate, [str(wav), "-o", str(out), "-m", "0"])
    assert result.exit_code == 2 and "chunk-multiplier" in result.output


def test_closing_turns_option_reaches_the_stream(tmp_path, monkeypatch):
    from hpo_engine.sst import simulate as simulate_module
    seen = []

    class Recording(simulate_module.SSTStream):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.closing_turns)

    monkeypatch.setattr(simulate_module, "SSTStream", Recording)
    wav = tmp_path / "a.wav"
    sf.write(wav, espeak_wave("Hello there."), 16000)
    for option, expect in (([], 2), (["--closing-turns", "0"], 0), (["--closing-turns", "5"], 5)):
        result = CliRunner().invoke(translate, [str(wav), "-o", str(tmp_path / "o.log"), "--max-new-tokens", "2",
                                                *option])
        assert result.exit_code == 0, result.output
        assert seen[-1] == expect
    result = CliRunner().invoke(translate, [str(wav), "-o", str(tmp_path / "o.log"), "--closing-turns", "-1"])
    assert result.exit_code == 2 and "closing-turns" in result.output
