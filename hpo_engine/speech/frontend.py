"""Audio to LLM-width speech rows, chunk by chunk: StreamingEncoder + a speech adapter.

    PCM (any split) -> per completed chunk of F = chunk_ms / 20 encoder frames: rows [n, d_llm]
    adapter = Projector:  n = F / stack, always (HPO geometry: 1.12 s * m = 56 m frames -> 14 m rows of 80 ms)
    adapter = CTCBridge:  n = the chunk's emitted CTC tokens, 0 .. F / stack (often 0 in a pause)
    adapter = WhisperTranscriber: n = the LLM tokens of the words the chunk commits (often 0); it reads
              the chunk's audio as F frames of 320 samples (`reads_audio`) and runs the encoder itself

All adapters expose `new_state()` (per stream) and `chunk_rows(frames [F, d_enc], state, final) -> [n, d_llm]`.
"""
from __future__ import annotations

import numpy as np
import torch

from .audio import pcm16_to_float
from .encoder import WhisperEncoder
from .streaming import SAMPLES_PER_FRAME, StreamingEncoder, mono_pcm

FRAME_MS = 20            # one Whisper encoder frame
HPO_CHUNK_MS = 1120      # m = 1


class AudioFrames:
    """The StreamingEncoder's push/flush over raw audio: PCM [n] -> [k * chunk_frames, 320] float32, for an
    adapter that encodes the audio itself. flush() returns the rest, zero-padded to whole 20 ms frames."""

    def __init__(self, chunk_frames: int):
        self.chunk_samples = chunk_frames * SAMPLES_PER_FRAME
        self.reset()

    def reset(self) -> None:
        self._pcm = np.zeros(0, np.float32)

    def push(self, pcm: np.ndarray) -> torch.Tensor:
        self._pcm = np.concatenate([self._pcm, mono_pcm(pcm, np.float32)])
        n = len(self._pcm) // self.chunk_samples * self.chunk_samples
        out, self._pcm = self._pcm[:n], self._pcm[n:]
        return torch.from_numpy(out.copy()).reshape(-1, SAMPLES_PER_FRAME)

    def flush(self) -> torch.Tensor:
        rest = np.pad(self._pcm, (0, -len(self._pcm) % SAMPLES_PER_FRAME))
        self.reset()
        return torch.from_numpy(rest).reshape(-1, SAMPLES_PER_FRAME)


class SpeechFrontEnd:
    def __init__(self, encoder: WhisperEncoder, adapter, chunk_ms: int = HPO_CHUNK_MS,
                 left_context_ms: int = 4000, positions: str = "window", right_context_ms: int = 0):
        frames, rest = divmod(chunk_ms, FRAME_MS)
        stack = adapter.cfg.stack
        if rest or frames % stack:
            raise ValueError(f"chunk_ms={chunk_ms} must be a multiple of {FRAME_MS * stack} ms "
                             f"({stack} frames of {FRAME_MS} ms per row)")
        if adapter.cfg.d_encoder != encoder.cfg.d_model:
            raise ValueError(f"{type(adapter).__name__} expects width {adapter.cfg.d_encoder}, "
                             f"encoder gives {encoder.cfg.d_model}")
        self.reads_audio = getattr(adapter, "reads_audio", False)
        self.stream = AudioFrames(frames) if self.reads_audio else StreamingEncoder(
            encoder, frames, left_context_ms // FRAME_MS, positions, right_context_ms // FRAME_MS)
        self.adapter, self.state = adapter, adapter.new_state()
        self.frames_per_chunk = frames
        self.max_rows_per_chunk = frames // stack
        self.chunk_samples = frames * SAMPLES_PER_FRAME

    @torch.inference_mode()
    def _rows(self, frames: torch.Tensor, final: bool = False) -> list[torch.Tensor]:
        """`final`: these frames end the stream (a transcriber then commits all it has heard)."""
        if not len(frames):
            if not (final and getattr(self.state, "pending", False)):   # words heard, not yet committed
                return []
            frames = torch.zeros(0, SAMPLES_PER_FRAME if self.reads_audio else self.adapter.cfg.d_encoder)
        w = next(self.adapter.parameters())
        # audio stays float32 (the adapter's mel needs it); encoder frames take the adapter's dtype
        chunks = torch.split(frames if self.reads_audio else frames.to(w.device, w.dtype), self.frames_per_chunk)
        return [self.adapter.chunk_rows(chunk, self.state, final=final and k == len(chunks) - 1)
                for k, chunk in enumerate(chunks)]

    def push(self, pcm: np.ndarray) -> list[torch.Tensor]:
        """float PCM [n] @ 16 kHz -> one [rows, d_llm] tensor per chunk completed by it (often none)."""
        return self._rows(self.stream.push(pcm))

    def push_pcm16(self, data: bytes) -> list[torch.Tensor]:
        return self.push(pcm16_to_float(data, allow_empty=True))

    def flush(self) -> list[torch.Tensor]:
        """End of stream: the rest as full chunks and a last shorter one (or nothing)."""
        return self._rows(self.stream.flush(), final=True)
