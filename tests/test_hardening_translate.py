"""`hpo-engine translate` with bad inputs: each bad file is named and skipped, the batch goes on, the
exit is non-zero, and the output appears whole or not at all (an existing log is never emptied)."""
import io
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from hpo_engine.speech.audio import AudioFormatError, load_audio
from hpo_engine.sst.cli import translate
from test_sst_helpers import espeak_wave, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
OLD_LOG = '{"index": 0, "prediction": "a result worth keeping", "delays": [1], "source_length": 10}\n'


def wav_bytes(wave, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, 16000, subtype=subtype, format="WAV")
    return buf.getvalue()


def bad_files(tmp_path) -> dict:
    """name -> (path, the words its error must contain)"""
    wave = espeak_wave("Hello.")
    nan = wave.copy()
    nan[100] = np.nan
    inf = wave.copy()
    inf[50] = np.inf
    whole = wav_bytes(wave)
    files = {"nan.wav": (wav_bytes(nan, "FLOAT"), "1 NaN"), "inf.wav": (wav_bytes(inf, "FLOAT"), "1 infinite"),
             "cut.wav": (whole[:len(whole) // 2], "truncated"), "noise.wav": (b"not audio" * 20, "cannot decode")}
    out = {}
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (str(tmp_path / name), reason)
    return out


def test_load_audio_names_nan_infinite_and_truncated_wavs(tmp_path):
    for name, (path, reason) in bad_files(tmp_path).items():
        with pytest.raises(AudioFormatError, match=reason):
            load_audio(path)
    # a WAV written to a pipe cannot seek back to its sizes: it leaves placeholders (espeak-ng's here)
    piped = bytearray(wav_bytes(espeak_wave("Hello.")))
    assert piped[36:40] == b"data"
    piped[4:8], piped[40:44] = (0x7FFFF000 + 36).to_bytes(4, "little"), (0x7FFFF000).to_bytes(4, "little")
    assert len(load_audio(bytes(piped))) == len(espeak_wave("Hello."))


def test_bad_files_are_named_and_skipped_and_the_batch_goes_on(tmp_path):
    bad = bad_files(tmp_path)
    good = []
    for i, text in enumerate(["Hello.", "Thank you."]):
        good.append(str(tmp_path / f"good{i}.wav"))
        sf.write(good[-1], espeak_wave(text), 16000)
    # the bad files come first and between the good ones: the batch must go on after each
    inputs = [bad["nan.wav"][0], good[0], bad["cut.wav"][0], bad["inf.wav"][0], bad["noise.wav"][0], good[1]]
    out = tmp_path / "instances.log"
    out.write_text(OLD_LOG)
    result = CliRunner().invoke(translate, [*inputs, "-o", str(out), "--max-new-tokens", "2"])
    assert result.exit_code == 1
    for path, reason in bad.values():
        assert f"skipping {path}: " in result.output and reason in result.output
    assert "4 of 6 file(s) skipped" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["source"]) for r in rows] == [(1, [good[0]]), (5, [good[1]])]   # indices of AUDIO
    assert not list(tmp_path.glob(".instances.log.*"))          # no temporary file left behind


def test_only_bad_files_leave_the_existing_log_untouched(tmp_path):
    bad = bad_files(tmp_path)
    out = tmp_path / "instances.log"
    out.write_text(OLD_LOG)
    result = CliRunner().invoke(translate, [p for p, _ in bad.values()] + ["-o", str(out)])
    assert result.exit_code == 1 and "no readable audio among 4 file(s)" in result.output
    assert out.read_text() == OLD_LOG


def test_a_batch_that_dies_midway_leaves_the_existing_log_untouched(tmp_path, monkeypatch):
    import hpo_engine.sst.simulate as simulate_module
    wavs = []
    for i in range(2):
        wavs.append(str(tmp_path / f"{i}.wav"))
        sf.write(wavs[-1], espeak_wave("Hello."), 16000)
    real, calls = simulate_module.simulate, []

    def dies_on_the_second(*args, **kwargs):       # as if the process were interrupted inside the batch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(simulate_module, "simulate", dies_on_the_second)
    out = tmp_path / "instances.log"
    out.write_text(OLD_LOG)
    result = CliRunner().invoke(translate, [*wavs, "-o", str(out), "--max-new-tokens", "2"])
    assert result.exit_code != 0 and len(calls) == 2
    assert out.read_text() == OLD_LOG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.wav", "1.wav", "instances.log"]
