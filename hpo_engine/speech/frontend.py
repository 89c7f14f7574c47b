"""Audio to placeholder embeddings, chunk by chunk: StreamingEncoder + Projector.

    PCM (any split) -> per completed chunk: [P, d_llm], P = chunk_frames / stack
    (HPO geometry: chunk = 1.12 s * m = 56 m encoder frames -> P = 14 m embeddings of 80 ms)
"""
from __future__ import annotations

import numpy as np
import torch

from .audio import pcm16_to_float
from .encoder import WhisperEncoder
from .projector import Projector
from .streaming import SAMPLES_PER_FRAME, StreamingEncoder

FRAME_MS = 20            # one Whisper encoder frame
HPO_CHUNK_MS = 1120      # m = 1


class SpeechFrontEnd:
    def __init__(self, encoder: WhisperEncoder, projector: Projector, chunk_ms: int = HPO_CHUNK_MS,
                 left_context_ms: int = 4000, positions: str = "window", right_context_ms: int = 0):
        frames, rest = divmod(chunk_ms, FRAME_MS)
        stack = projector.cfg.stack
        if rest or frames % stack:
            raise ValueError(f"chunk_ms={chunk_ms} must be a multiple of {FRAME_MS * stack} ms "
                             f"({stack} frames of {FRAME_MS} ms per embedding)")
        if projector.cfg.d_encoder != encoder.cfg.d_model:
            raise ValueError(f"projector expects width {projector.cfg.d_encoder}, encoder gives {encoder.cfg.d_model}")
        self.stream = StreamingEncoder(encoder, frames, left_context_ms // FRAME_MS, positions,
                                       right_context_ms // FRAME_MS)
        self.projector = projector
        self.embeddings_per_chunk = frames // stack
        self.chunk_samples = frames * SAMPLES_PER_FRAME

    @torch.inference_mode()
    def _project(self, frames: torch.Tensor) -> list[torch.Tensor]:
        w = next(self.projector.parameters())
        emb = self.projector(frames.to(w.device, w.dtype))
        return list(torch.split(emb, self.embeddings_per_chunk)) if len(emb) else []

    def push(self, pcm: np.ndarray) -> list[torch.Tensor]:
        """float PCM [n] @ 16 kHz -> one [P, d_llm] tensor per chunk completed by it (often none)."""
        return self._project(self.stream.push(pcm))

    def push_pcm16(self, data: bytes) -> list[torch.Tensor]:
        return self.push(pcm16_to_float(data, allow_empty=True))

    def flush(self) -> list[torch.Tensor]:
        """End of stream: the rest as [P, d_llm] chunks and a last [ceil(rest / stack) <= P, d_llm] (or nothing)."""
        return self._project(self.stream.flush())
