"""Speech projector: stack k consecutive encoder frames, then a 2-layer MLP to the LLM width.

    frames [B, T, d_enc] --pad T up to a multiple of k with zeros--> [B, ceil(T/k), k * d_enc]
      --Linear--> GELU --Linear--> [B, ceil(T/k), d_llm]

With Whisper's 20 ms frames and k = 4, one embedding covers 80 ms, the rate of HPO's encoder:
a 1.12 s chunk (56 frames) gives the 14 placeholder embeddings of one user turn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ProjectorConfig:
    d_encoder: int = 384     # Whisper tiny
    d_llm: int = 576         # SmolLM2-135M
    stack: int = 4           # encoder frames per embedding (4 x 20 ms = 80 ms)
    d_hidden: int | None = None   # MLP width; None -> d_llm

    def to_dict(self) -> dict:
        return asdict(self)


def stack_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """[..., T, d] -> [..., ceil(T/k), k*d]: row i is frames ik .. ik+k-1 concatenated (zeros past the end)."""
    T, d = x.shape[-2:]
    pad = -T % k
    if pad:
        x = F.pad(x, (0, 0, 0, pad))   # a partial last group (end of stream) is completed with zero frames
    return x.reshape(*x.shape[:-2], (T + pad) // k, k * d)


class Projector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.d_hidden or cfg.d_llm
        self.fc1 = nn.Linear(cfg.stack * cfg.d_encoder, hidden)
        self.fc2 = nn.Linear(hidden, cfg.d_llm)

    def num_embeddings(self, n_frames: int) -> int:
        return -(-n_frames // self.cfg.stack)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [..., T, d_encoder] -> [..., ceil(T / stack), d_llm]."""
        return self.fc2(F.gelu(self.fc1(stack_frames(frames, self.cfg.stack))))

    def new_state(self) -> None:
        """A projector keeps no state across chunks (the front end's adapter interface)."""
        return None

    def chunk_rows(self, frames: torch.Tensor, state: None = None, final: bool = False) -> torch.Tensor:
        """One chunk's encoder frames [T, d_encoder] -> its rows [ceil(T / stack), d_llm]."""
        return self(frames)
