"""Audio front end: raw PCM and audio files -> float32 mono waveforms at 16 kHz.

Everything downstream (log-mel, encoder) assumes `SAMPLE_RATE` mono float32 in [-1, 1].
"""
from __future__ import annotations

import io
import os
from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16_000


class AudioFormatError(ValueError):
    """Input audio that cannot be decoded; the message says why."""


def pcm16_to_float(data: bytes | bytearray | memoryview, allow_empty: bool = False) -> np.ndarray:
    """PCM signed 16-bit little-endian mono bytes -> float32 [n] in [-1, 1).

    Odd byte counts are rejected (never silently truncated: a lost byte shifts every later sample).
    """
    n = len(data)
    if n % 2:
        raise AudioFormatError(f"PCM s16le needs an even number of bytes, got {n}")
    if n == 0 and not allow_empty:
        raise AudioFormatError("empty PCM buffer")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(wave: np.ndarray) -> bytes:
    """float [n] in [-1, 1] -> PCM s16le bytes (clipped, rounded). The inverse of pcm16_to_float."""
    x = np.clip(np.round(np.asarray(wave, dtype=np.float64) * 32768.0), -32768, 32767)
    return x.astype("<i2").tobytes()


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited polyphase resampling (Kaiser-windowed sinc FIR, scipy's resample_poly).

    wave [n] -> [ceil(n * target_sr / orig_sr)] float32. The ratio is reduced first
    (44.1k -> 16k is 160/441), so any integer rate works exactly.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioFormatError(f"bad sample rates {orig_sr} -> {target_sr}")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    from scipy.signal import resample_poly  # scipy is only needed off the 16 kHz path

    r = Fraction(target_sr, orig_sr)
    # float64 inside: the FIR sums hundreds of taps; output stays float32
    out = resample_poly(wave.astype(np.float64), r.numerator, r.denominator, window=("kaiser", 5.0))
    return out.astype(np.float32)


def load_audio(source: str | os.PathLike | bytes | io.IOBase, sr: int = SAMPLE_RATE) -> np.ndarray:
    """WAV / FLAC / OGG (anything libsndfile reads) at any rate -> float32 mono [n] at `sr`.

    `source` is a path, a file object or the file's bytes. Channels are averaged.
    """
    import soundfile as sf

    name = source if isinstance(source, (str, os.PathLike)) else "<audio bytes>"
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"no such audio file: {source}")
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise AudioFormatError("empty audio file")
        source = io.BytesIO(source)
    try:
        wave, file_sr = sf.read(source, dtype="float32", always_2d=True)  # [n, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioFormatError(
            f"cannot decode {name}: {e} (supported: {', '.join(sorted(sf.available_formats()))})"
        ) from e
    if wave.shape[0] == 0:
        raise AudioFormatError(f"{name} holds no samples")
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    return resample(mono, file_sr, sr)
