"""Precomputed speech features: rows of an `.npy` file, as in HPO's RL manifests.

The public HPO manifest gives, per sample, `audio_npy_path` + `audio_npy_row`: projected speech
features ([frames, d_llm], one per 80 ms) ready to fill placeholder positions; `chunk_frame_size`
(14) of them per chunk. These bypass the encoder and the projector.

Accepted `.npy` layouts:
  [rows, frames, d]   one padded block (memory-mapped: only the requested row is read); pass
                      `n_frames` to drop the padding
  [frames, d]         a single sample (row must be 0)
  object array        rows of different lengths; pickled, so only with allow_pickle=True (trusted files)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_feature_row(path: str | Path, row: int, n_frames: int | None = None, d_model: int | None = None,
                     allow_pickle: bool = False) -> torch.Tensor:
    """One sample's precomputed embeddings -> float32 [frames, d]."""
    try:
        arr = np.load(path, mmap_mode="r")   # plain arrays: read lazily, only the row asked for
    except ValueError as e:                  # object arrays cannot be memory-mapped
        if not allow_pickle:
            raise ValueError(f"{path}: {e} (object arrays need allow_pickle=True, for trusted files only)") from e
        arr = np.load(path, allow_pickle=True)
    if arr.dtype == object:
        if not 0 <= row < len(arr):
            raise IndexError(f"{path}: row {row} out of range [0, {len(arr)})")
        x = np.asarray(arr[row])
    elif arr.ndim == 3:
        if not 0 <= row < arr.shape[0]:
            raise IndexError(f"{path}: row {row} out of range [0, {arr.shape[0]})")
        x = arr[row]
    elif arr.ndim == 2:
        if row != 0:
            raise IndexError(f"{path}: a 2-D array holds one sample, row must be 0, got {row}")
        x = arr
    else:
        raise ValueError(f"{path}: expected [rows, frames, d], [frames, d] or an object array, got shape {arr.shape}")
    if x.ndim != 2:
        raise ValueError(f"{path}: row {row} has shape {x.shape}, expected [frames, d]")
    if n_frames is not None:
        if n_frames > x.shape[0]:
            raise ValueError(f"{path}: row {row} has {x.shape[0]} frames, asked for {n_frames}")
        x = x[:n_frames]
    if d_model is not None and x.shape[1] != d_model:
        raise ValueError(f"{path}: features of width {x.shape[1]}, the model expects {d_model}")
    return torch.from_numpy(np.array(x, dtype=np.float32))


def split_chunks(features: torch.Tensor, chunk_frame_size: int = 14) -> list[torch.Tensor]:
    """[frames, d] -> per-chunk [chunk_frame_size, d] tensors; the last one may be shorter."""
    if chunk_frame_size < 1:
        raise ValueError("chunk_frame_size must be >= 1")
    return list(torch.split(features, chunk_frame_size))
