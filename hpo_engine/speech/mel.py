"""Whisper's 80-bin log-mel features, in torch.

    audio [n] @ 16 kHz --STFT(n_fft 400, hop 160, periodic Hann, centred, reflect pad)--> |X|^2 [201, n//160]
      --Slaney mel filters [80, 201]--> log10(max(., 1e-10)) --clamp to (max - 8)--> (x + 4) / 4

Split in two so a streaming caller can cache the per-frame part:
`log10_mel` (depends only on 400 samples around each frame) and `whisper_normalize` (depends on
the maximum over the whole input).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

N_FFT = 400
HOP = 160
N_MELS = 80
SAMPLE_RATE = 16_000


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, lin)


@lru_cache(maxsize=8)
def _mel_filters_np(n_mels: int, n_fft: int, sr: int) -> np.ndarray:
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    width = np.diff(mel_hz)                                   # [n_mels + 1]
    ramp = mel_hz[:, None] - fft_hz[None, :]                  # [n_mels + 2, n_freq]
    rise = -ramp[:-2] / width[:-1, None]
    fall = ramp[2:] / width[1:, None]
    w = np.maximum(0.0, np.minimum(rise, fall))               # triangles [n_mels, n_freq]
    w *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]          # Slaney norm: each triangle has unit area
    return w


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, n_fft//2 + 1] (librosa's defaults)."""
    return torch.from_numpy(_mel_filters_np(n_mels, n_fft, sr)).to(dtype)


def log10_mel(audio: torch.Tensor | np.ndarray, n_mels: int = N_MELS) -> torch.Tensor:
    """audio [..., n] -> log10 mel power [..., n_mels, n // 160] float64, before Whisper's clamp.

    Frame t covers samples [160 t - 200, 160 t + 200), reflect-padded at both ends. Whisper drops
    the STFT's last frame, so n samples give n // 160 frames. Computed in float64: bins 80 dB below
    the peak survive the clamp and float32 STFT noise there would show up in the features.
    """
    x = torch.as_tensor(audio).to(torch.float64)
    if x.shape[-1] <= N_FFT // 2:  # the centred STFT reflects 200 samples at each end
        raise ValueError(f"log10_mel: {x.shape[-1]} samples; needs more than {N_FFT // 2} (12.5 ms)")
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec[..., :-1].abs() ** 2                                      # [b, 201, n // 160]
    mel = mel_filters(n_mels) @ power                                      # [b, n_mels, n // 160]
    return torch.clamp(mel, min=1e-10).log10().reshape(*lead, n_mels, -1)


def whisper_normalize(logmel: torch.Tensor, floor_from: torch.Tensor | None = None) -> torch.Tensor:
    """[..., n_mels, T] log10 mel -> Whisper features float32: clamp at (max - 8), then (x + 4) / 4.

    The max is taken per item over its mel bins and frames (`floor_from`, if given, supplies that max).
    """
    top = logmel.amax(dim=(-2, -1), keepdim=True) if floor_from is None else floor_from
    return ((torch.maximum(logmel, top - 8.0) + 4.0) / 4.0).to(torch.float32)


def log_mel_spectrogram(audio: torch.Tensor | np.ndarray, n_mels: int = N_MELS,
                        pad_to: int | None = None) -> torch.Tensor:
    """audio [..., n] float @ 16 kHz -> Whisper input features [..., n_mels, T] float32.

    T = n // 160, or pad_to // 160 when `pad_to` samples of zero-padding are asked for (Whisper
    itself pads every input to 30 s = 480000 samples, i.e. 3000 frames).
    """
    x = torch.as_tensor(audio)
    if pad_to is not None:
        if x.shape[-1] > pad_to:
            raise ValueError(f"audio has {x.shape[-1]} samples, more than pad_to={pad_to}")
        x = torch.nn.functional.pad(x.to(torch.float64), (0, pad_to - x.shape[-1]))
    return whisper_normalize(log10_mel(x, n_mels))
