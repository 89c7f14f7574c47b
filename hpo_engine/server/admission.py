"""Admission control: take a new stream only while the engine can still translate every open stream in
real time, so that the admitted streams never fall behind the speakers (refusing beats degrading all).

The measure is the engine's compute per chunk (its busy time over the chunks it completed; batching makes
it fall as streams are added, so the estimate errs on the safe side) against the chunk's audio duration:
n streams need n x cost_s of compute per chunk_s of audio. It starts from a calibration run at start-up
and follows what the worker measures.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

MEASURE_CHUNKS = 4      # chunks averaged per update: one step's time alone is noisy
SMOOTHING = 0.3         # weight of a new measurement (an exponential moving average)


@dataclass
class Admission:
    chunk_s: float                  # audio per chunk
    max_load: float                 # fraction of real time the engine may compute; 0 = no check
    cost_s: float | None = None     # compute per chunk
    _busy_s: float = 0.0
    _chunks: int = 0

    def record(self, busy_s: float, chunks: int) -> None:
        """Engine thread: a step took busy_s and completed `chunks` chunks (turns)."""
        self._busy_s += busy_s
        self._chunks += chunks
        if self._chunks >= MEASURE_CHUNKS:
            measured = self._busy_s / self._chunks
            self.cost_s = measured if self.cost_s is None else (1 - SMOOTHING) * self.cost_s + SMOOTHING * measured
            self._busy_s, self._chunks = 0.0, 0

    @property
    def load_per_stream(self) -> float | None:
        """Fraction of real time one stream costs the engine."""
        return None if self.cost_s is None else self.cost_s / self.chunk_s

    def capacity(self) -> int | None:
        """Streams the engine sustains at max_load (at least 1), or None when unknown or unchecked."""
        if not self.max_load or self.cost_s is None:
            return None
        return max(1, math.floor(self.max_load / max(self.load_per_stream, 1e-9)))

    def admits(self, active: int) -> bool:
        """Whether one more stream keeps the engine within max_load (the first stream is always taken)."""
        cap = self.capacity()
        return cap is None or active == 0 or active + 1 <= cap


def calibrate(model, max_new_tokens: int | None, chunks: int = 2) -> float | None:
    """Seconds of compute per chunk for one stream alone, measured on `chunks` chunks of quiet noise (None
    when not even one turn fits the KV cache). Runs before the worker starts: it uses the engine."""
    from hpo_engine.runtime.scheduler import OutOfBlocks
    from hpo_engine.sst.stream import SSTStream

    stream = SSTStream(model, None, max_new_tokens)
    noise = 0.01 * np.random.default_rng(0).standard_normal(chunks * stream.frontend.chunk_samples)
    start = time.perf_counter()
    try:
        stream.push(noise.astype(np.float32))
    except OutOfBlocks:         # a pool too small for `chunks` turns: what was done still measures
        pass
    finally:
        seconds, turns = time.perf_counter() - start, stream.turns_done
        stream.close()
        model.engine.reset_prefix_cache()       # serving starts with every block free
    return seconds / turns if turns else None
