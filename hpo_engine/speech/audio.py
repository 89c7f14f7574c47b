"""Audio front end: raw PCM and audio files -> float32 mono waveforms at 16 kHz.

Everything downstream (log-mel, encoder) assumes `SAMPLE_RATE` mono float32 in [-1, 1].
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16_000
STREAMED_WAV_SIZE = 0x7FFF0000     # data chunk sizes from here up are placeholders (see wav_truncation)


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


def wav_truncation(f) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF/WAVE file's data chunk when the file ends before the chunk
    does, else None. libsndfile quietly reads what is there, so a cut-off upload or copy would pass as a
    shorter recording. `f` is a seekable binary file; non-WAV files and WAVs written to a pipe give None
    (they cannot seek back to fill in the size: they leave 0 or a placeholder of about 2 or 4 GiB, as
    espeak-ng's 0x7FFFF000 or ffmpeg's 0xFFFFFFFF; a real WAV that large and truncated goes unnoticed)."""
    start = f.tell()
    try:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - pos - 8
                return (length, present) if present < length < STREAMED_WAV_SIZE else None
            pos += 8 + length + (length & 1)        # chunks are padded to even sizes
        return None
    finally:
        f.seek(start)


def check_finite(wave: np.ndarray, name: str) -> None:
    """NaN or infinite samples (float WAVs can hold them) would turn every later frame's features into
    NaN; name them instead."""
    bad = ~np.isfinite(wave.reshape(len(wave), -1)).all(axis=1)      # per sample, any channel
    if bad.any():
        nan, inf = int(np.isnan(wave).sum()), int(np.isinf(wave).sum())
        raise AudioFormatError(f"{name} holds {nan} NaN and {inf} infinite sample value(s) (the first at "
                               f"sample {int(np.flatnonzero(bad)[0])}); audio must be finite")


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
    with open(source, "rb") if isinstance(source, (str, os.PathLike)) else contextlib.nullcontext(source) as f:
        cut = wav_truncation(f) if f.seekable() else None
        if cut:
            raise AudioFormatError(f"{name} is truncated: its WAV header declares {cut[0]} bytes of audio "
                                   f"but the file ends after {cut[1]}")
        try:
            wave, file_sr = sf.read(f, dtype="float32", always_2d=True)  # [n, channels]
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise AudioFormatError(
                f"cannot decode {name}: {e} (supported: {', '.join(sorted(sf.available_formats()))})"
            ) from e
    if wave.shape[0] == 0:
        raise AudioFormatError(f"{name} holds no samples")
    check_finite(wave, name)
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    return resample(mono, file_sr, sr)
