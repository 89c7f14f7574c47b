"""Chunk-by-chunk Whisper encoding of unbounded audio with a bounded left context.

Units: 1 mel frame = 160 samples (10 ms); 1 encoder frame = 2 mel frames = 320 samples (20 ms).
A chunk is `chunk_frames` encoder frames (HPO: 1.12 s = 56 frames, stacked by 4 into 14 embeddings).

Chunk k covers encoder frames [e0, e1), e1 = e0 + chunk. With `right_context_frames` R (lookahead,
default 0), it is encoded once the audio reaches sample n_k = 320 (e1 + R), on a WINDOW:

    encoder frames [w0, e1 + R), w0 = max(0, e0 - left_context); the outputs of [e0, e1) are emitted
    mel of the window = Whisper's log-mel of the audio prefix [0, n_k), sliced to mel frames [2 w0, 2 (e1 + R))
    clamp floor = (max over the window) - 8, as Whisper does for one input
    positions: frame f gets position f - origin, with origin chosen by `positions`:
      "window" (default): origin = w0, the window starts at position 0 like every Whisper input.
      "absolute": origin = the largest multiple of E = max_positions - (left + chunk + R) that is <= w0,
        so frames keep their stream position (the positions of whole-utterance encoding for the first
        E + left frames) and the origin jumps by E only when the window would pass position 1499.

Why "window" is the default: Whisper has positions for 30 s only and was trained with every input
starting at position 0. With "window", every chunk after the first `left_context_frames` is encoded
in the same regime (emitted frames always sit at positions left .. left + chunk - 1 with exactly
`left` frames of context), so the features an LLM sees at minute 60 look like those at minute 1.
"absolute" tracks whole-utterance encoding closely (the encoder's output carries its position
strongly: measured in tests/test_speech_streaming.py) but its features change regime at every origin
jump. Either way a frame's position, and with bidirectional attention its states in every layer,
change from one window to the next, so transformer keys/values cannot be reused across chunks.

Lookahead: the newest frames of a window see no future audio, unlike whole-utterance encoding.
Measured on 10.1 s of speech (absolute positions, left 2 s; cosine to whole, mean / 5th percentile):
R = 0: 0.953 / 0.831, R = 5 (100 ms): 0.966 / 0.902, R = 10 (200 ms): 0.973 / 0.945, R = 25: 0.979 / 0.962.
Each R frame adds 20 ms of latency to every chunk, hence off by default.

Cached across chunks: the unclamped log10-mel of every frame whose 400-sample STFT window is complete
(a frame never changes once its samples have arrived), and only the PCM still needed for the next
frames. Recomputed every chunk: the last mel frame (its STFT window reaches past n_k, reflect-padded
as at the end of an utterance), the clamp (it depends on the window's maximum), the conv stem (its
input changes with the clamp; ~8% of the FLOPs) and the transformer over the whole window.

The result is a function of the audio and the three sizes only, not of how the PCM was split into
`push` calls. `flush()` ends the stream with Whisper's end-of-input rule: n samples give n // 160 mel
frames and ceil(n / 320) encoder frames; it returns every frame not emitted yet (fewer than chunk + R).
"""
from __future__ import annotations

import numpy as np
import torch

from .encoder import WhisperEncoder
from .mel import HOP, log10_mel, whisper_normalize

SAMPLES_PER_FRAME = 2 * HOP   # 320 samples = 20 ms per encoder frame
_HALF = 200                    # half the STFT window: frame t uses samples [160 t - 200, 160 t + 200)


def mono_pcm(pcm, dtype) -> np.ndarray:
    """`pcm` as a 1-D array of `dtype`; a clear error for anything else or for NaN / infinite samples."""
    pcm = np.asarray(pcm, dtype=dtype)
    if pcm.ndim != 1:
        raise ValueError(f"push expects mono PCM [n], got shape {pcm.shape}")
    if not np.isfinite(pcm).all():
        raise ValueError("PCM holds NaN or infinite samples")
    return pcm


class StreamingEncoder:
    def __init__(self, encoder: WhisperEncoder, chunk_frames: int = 56, left_context_frames: int = 200,
                 positions: str = "window", right_context_frames: int = 0):
        if chunk_frames < 1 or left_context_frames < 0 or right_context_frames < 0:
            raise ValueError("chunk_frames must be >= 1, left/right_context_frames >= 0")
        if positions not in ("window", "absolute"):
            raise ValueError(f"positions must be 'window' or 'absolute', got {positions!r}")
        window = left_context_frames + chunk_frames + right_context_frames
        if window > encoder.cfg.max_positions:
            raise ValueError(f"window of {window} frames exceeds the encoder's {encoder.cfg.max_positions} positions")
        self.encoder = encoder
        self.chunk_frames = chunk_frames
        self.left_context_frames = left_context_frames
        self.positions = positions
        self.right_context_frames = right_context_frames
        self.reset()

    def position_origin(self, w0: int) -> int:
        """Stream frame that gets position 0 in the window starting at frame w0."""
        if self.positions == "window":
            return w0
        epoch = self.encoder.cfg.max_positions - self.left_context_frames - self.chunk_frames \
            - self.right_context_frames
        return w0 // epoch * epoch if epoch > 0 else w0

    def reset(self) -> None:
        self.samples_received = 0
        self.frames_emitted = 0
        self._pcm = np.zeros(0, np.float64)   # samples [pcm_start, samples_received)
        self._pcm_start = 0
        self._mel = torch.zeros(self.encoder.cfg.n_mels, 0, dtype=torch.float64)  # final frames [mel_start, mel_end)
        self._mel_start = 0

    @property
    def _mel_end(self) -> int:
        return self._mel_start + self._mel.shape[1]

    def push(self, pcm: np.ndarray) -> torch.Tensor:
        """Append float PCM [n] (16 kHz); returns the frames of every chunk completed: [k * chunk_frames, d]."""
        pcm = mono_pcm(pcm, np.float64)
        self._pcm = np.concatenate([self._pcm, pcm])
        self.samples_received += len(pcm)
        outs = []
        R = self.right_context_frames
        while self.samples_received >= (self.frames_emitted + self.chunk_frames + R) * SAMPLES_PER_FRAME:
            e1 = self.frames_emitted + self.chunk_frames
            outs.append(self._encode_until(e1, e1 + R, (e1 + R) * SAMPLES_PER_FRAME))
        return torch.cat(outs) if outs else self._empty()

    def flush(self) -> torch.Tensor:
        """End of stream: every frame not emitted yet [< chunk + R, d]; then the stream is reset."""
        n = self.samples_received
        total = -(-(n // HOP) // 2)  # ceil(mel frames / 2)
        out = self._encode_until(total, total, n) if total > self.frames_emitted and n > _HALF else self._empty()
        self.reset()
        return out

    def _empty(self) -> torch.Tensor:
        return torch.zeros(0, self.encoder.cfg.d_model, device=next(self.encoder.parameters()).device)

    def _mel_frames(self, n_end: int) -> torch.Tensor:
        """log10-mel frames [mel_start, n_end // 160) of the audio prefix [0, n_end); caches the final ones."""
        first = self._mel_end                                  # first frame not cached yet
        seg0 = max(0, first - 2) * HOP                         # 2 frames earlier: left reflect-padding stays outside
        seg = self._pcm[seg0 - self._pcm_start:n_end - self._pcm_start]
        fresh = log10_mel(torch.from_numpy(seg))[:, first - seg0 // HOP:]   # frames [first, n_end // 160)
        n_final = max(0, (n_end - _HALF) // HOP + 1 - first)  # frames whose STFT window ends by n_end
        self._mel = torch.cat([self._mel, fresh[:, :n_final]], dim=1)
        return torch.cat([self._mel, fresh[:, n_final:]], dim=1)

    @torch.inference_mode()
    def _encode_until(self, e1: int, w1: int, n_end: int) -> torch.Tensor:
        """Encode the window ending at frame w1 >= e1 (audio prefix [0, n_end)); emit [frames_emitted, e1)."""
        e0 = self.frames_emitted
        w0 = max(0, e0 - self.left_context_frames)
        mel = self._mel_frames(n_end)[:, 2 * w0 - self._mel_start:]     # [n_mels, <= 2 (w1 - w0)]
        feats = whisper_normalize(mel)[None]                              # the window's own clamp floor
        w = next(self.encoder.parameters())             # mel on CPU in float64; the encoder wherever it lives
        pos = w0 - self.position_origin(w0)
        out = self.encoder(feats.to(w.device, w.dtype), pos_offset=pos)[0, e0 - w0:e1 - w0]   # [e1 - e0, d]
        self.frames_emitted = e1
        # forget what the next window cannot need
        keep_mel = 2 * max(0, e1 - self.left_context_frames)
        self._mel = self._mel[:, max(0, keep_mel - self._mel_start):]
        self._mel_start = max(self._mel_start, keep_mel)
        keep_pcm = max(0, self._mel_end - 2) * HOP
        self._pcm = self._pcm[keep_pcm - self._pcm_start:]
        self._pcm_start = keep_pcm
        return out.float()
