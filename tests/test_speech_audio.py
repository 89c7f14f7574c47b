"""Audio front end: PCM decoding, file loading, resampling."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hpo_engine.speech.audio import (AudioFormatError, float_to_pcm16, load_audio, pcm16_to_float,
                                     resample)

SPEECH = Path(__file__).parent / "data" / "speech" / "librivox_0890.flac"


def test_pcm16_roundtrip_and_scale():
    rng = np.random.default_rng(1)
    ints = rng.integers(-32768, 32768, size=1001, dtype=np.int16)  # odd sample count
    x = pcm16_to_float(ints.astype("<i2").tobytes())
    assert x.dtype == np.float32 and x.shape == (1001,)
    np.testing.assert_array_equal(x, ints.astype(np.float32) / 32768.0)
    assert float_to_pcm16(x) == ints.astype("<i2").tobytes()
    assert pcm16_to_float(b"\x00\x80\xff\x7f").tolist() == [-1.0, 32767 / 32768]


def test_pcm16_errors():
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")
    with pytest.raises(AudioFormatError, match="empty"):
        pcm16_to_float(b"")
    assert pcm16_to_float(b"", allow_empty=True).shape == (0,)
    assert pcm16_to_float(memoryview(b"\x01\x00")).tolist() == [1 / 32768]


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 16000])
def test_resample_sine_is_accurate(sr):
    # a band-limited tone resampled must equal the same tone sampled at 16 kHz (away from the edges)
    f, dur = 1234.5, 0.7
    t_in = np.arange(int(sr * dur)) / sr
    y = resample(np.sin(2 * np.pi * f * t_in).astype(np.float32), sr)
    assert y.dtype == np.float32 and len(y) == int(np.ceil(len(t_in) * 16000 / sr))
    t_out = np.arange(len(y)) / 16000
    mid = slice(400, len(y) - 400)
    err = np.abs(y[mid] - np.sin(2 * np.pi * f * t_out[mid])).max()
    assert err < 2e-3, err


def test_resample_removes_content_above_nyquist():
    sr = 44100
    t = np.arange(sr) / sr
    y = resample(np.sin(2 * np.pi * 12000 * t).astype(np.float32), sr)  # 12 kHz > 8 kHz Nyquist
    assert np.abs(y[400:-400]).max() < 1e-2


@pytest.mark.parametrize("sr,fmt,channels", [(16000, "FLAC", 1), (44100, "WAV", 2), (22050, "FLAC", 1),
                                             (8000, "WAV", 1)])
def test_load_audio_any_rate(tmp_path, sr, fmt, channels):
    ref = load_audio(SPEECH)
    assert ref.dtype == np.float32 and len(ref) == 84800
    src = resample(ref, 16000, sr)
    data = np.stack([src] * channels, axis=1) if channels > 1 else src
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, data, sr, format=fmt, subtype="PCM_16")
    y = load_audio(path)
    assert y.ndim == 1 and y.dtype == np.float32
    assert abs(len(y) - len(ref)) <= 1
    n = min(len(y), len(ref))
    # speech band survives a round trip through another rate (8 kHz loses everything above 4 kHz)
    tol = 0.15 if sr == 8000 else 0.01
    rel = np.linalg.norm(y[:n] - ref[:n]) / np.linalg.norm(ref[:n])
    assert rel < tol, rel
    assert np.allclose(load_audio(path.read_bytes()), y)
    with open(path, "rb") as fh:
        assert np.allclose(load_audio(fh), y)


def test_load_audio_errors(tmp_path):
    with pytest.raises(AudioFormatError, match="empty"):
        load_audio(b"")
    with pytest.raises(AudioFormatError, match="cannot decode"):
        load_audio(b"this is not audio at all" * 10)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioFormatError, match="bad.wav"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioFormatError, match="no samples"):
        load_audio(empty)
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")
