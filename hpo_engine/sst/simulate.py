"""Simulated streaming over a whole recording, SimulEval style.

The audio is fed one chunk at a time, as if it arrived in real time but with no waiting; each output
unit (word, or character for unspaced languages) gets
    delay   = source ms consumed when it was written
    elapsed = delay + the computation ms spent on this recording so far (SimulEval's computation-aware
              time: what the delay would be had the audio arrived live and the system run sequentially)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hpo_engine.metrics.units import prediction_units
from hpo_engine.speech.audio import SAMPLE_RATE

from .checkpoint import SSTModel
from .config import UNSPACED_LANGUAGES
from .stream import SSTStream


@dataclass
class SimulatedInstance:
    prediction: str
    delays: list[float]
    elapsed: list[float]
    source_length: float      # ms
    chunk_processing_ms: list[float]

    def to_log(self, index: int, source: str | None = None, reference: str | None = None) -> dict:
        row = {"index": index, "prediction": self.prediction, "delays": self.delays, "elapsed": self.elapsed,
               "source_length": self.source_length}
        if source is not None:
            row["source"] = [source]
        if reference is not None:
            row["reference"] = reference
        return row


def latency_unit(target_lang: str) -> str:
    return "char" if target_lang in UNSPACED_LANGUAGES else "word"


def simulate(model: SSTModel, wave: np.ndarray, target_lang: str | None = None,
             max_new_tokens: int | None = None, unit: str | None = None) -> SimulatedInstance:
    """Translate `wave` (float32, 16 kHz) chunk by chunk; delays per output unit of the final text."""
    stream = SSTStream(model, target_lang, max_new_tokens)
    unit = unit or latency_unit(stream.target_lang)
    step = stream.frontend.chunk_samples
    compute_ms, delays, elapsed, processing = 0.0, [], [], []
    text = ""
    try:
        for start in range(0, max(len(wave), 1), step):
            last = start + step >= len(wave)
            t0 = time.perf_counter()
            deltas = stream.push(wave[start:start + step])
            if last:
                deltas += stream.finish()
            compute_ms += (time.perf_counter() - t0) * 1000
            for d in deltas:
                processing.append(d.processing_ms)
                # units of the new text: those of the running text minus those already timed
                text += d.text
                new = len(prediction_units(text, unit)) - len(delays)
                delays += [d.audio_ms] * new
                elapsed += [d.audio_ms + compute_ms] * new
    finally:
        stream.close()
    return SimulatedInstance(text, delays, elapsed, len(wave) * 1000 / SAMPLE_RATE, processing)
