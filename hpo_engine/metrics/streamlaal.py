"""StreamLAAL and StreamLAAL_CA (Papi et al. 2024, "StreamAtt"), as the reference script
`stream_laal.py` (FBK-fairseq) computes them: each recording's hypothesis is resegmented into its
reference sentences by mWER, every sentence's delays are re-based on the sentence start, the
SimulEval elapsed times are repaired (their compute time accumulates over a whole recording),
and LAAL is averaged over all sentences that received words. Times in ms.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import List, Sequence, Tuple

from .instances import LogInstance, MetricsInputError, SegmentDefinition
from .mwer import mwer_segment
from .recordings import group_recordings
from .simuleval_latency import length_adaptive_average_lagging
from .units import prediction_units, reference_length


@dataclass
class SentenceInstance:
    """A resegmented sentence: its piece of the hypothesis and delays from the sentence start."""

    prediction: str
    reference: str
    source_length: float  # ms
    delays: List[float]
    elapsed: List[float]


class DelayRebaser:
    """Cuts one recording's delays / elapsed times into its sentences, in order.

    The repaired elapsed time of a unit is its delay plus the compute time spent on it alone:
    e_i - e_{i-1} + d_{i-1} (the first unit of the recording keeps its elapsed; a unit emitted in
    the same step as the previous one keeps the previous compute time). Both are then shifted
    by the sentence start and clipped at 0.
    """

    def __init__(self, delays: Sequence[float], elapsed: Sequence[float], unit: str):
        self.delays, self.elapsed, self.unit = delays, elapsed, unit
        self.consumed = 0
        self.prev_delay = self.prev_elapsed = None
        self.prev_stream_delay = self.prev_stream_elapsed = None

    def __call__(self, piece: str, start_ms: float) -> Tuple[List[float], List[float]]:
        n = reference_length(piece.strip(), self.unit)
        delays = self.delays[self.consumed:self.consumed + n]
        elapseds = self.elapsed[self.consumed:self.consumed + n]
        out_d, out_e = [], []
        for delay, elapsed in zip(delays, elapseds):
            if self.prev_elapsed is None:
                stream_elapsed = elapsed
            elif elapsed == self.prev_elapsed:
                stream_elapsed = self.prev_stream_elapsed - self.prev_stream_delay + delay
            else:
                stream_elapsed = elapsed - self.prev_elapsed + self.prev_delay
            stream_delay = max(0.0, delay - start_ms)
            stream_elapsed = max(0.0, stream_elapsed - start_ms)
            out_d.append(stream_delay)
            out_e.append(stream_elapsed)
            self.prev_elapsed, self.prev_delay = elapsed, delay
            self.prev_stream_delay, self.prev_stream_elapsed = stream_delay, stream_elapsed
        self.consumed += n
        return out_d, out_e


def resegment_mwer(
    log: Sequence[LogInstance], references: Sequence[str], segments: Sequence[SegmentDefinition],
    unit: str = "word", log_path: str = "instances.log",
) -> List[SentenceInstance]:
    """One SentenceInstance per reference sentence (grouped by recording, in segmentation order)."""
    out: List[SentenceInstance] = []
    for rec in group_recordings(segments, references, log, log_path):
        ins = rec.log
        if ins.delays is None:
            raise MetricsInputError(f"{log_path} line {ins.line_number}: missing field 'delays'")
        n_units = len(prediction_units(ins.prediction, unit))
        if n_units != len(ins.delays):
            raise MetricsInputError(
                f"{log_path} line {ins.line_number}: {n_units} {unit}s in the prediction but "
                f"{len(ins.delays)} delays")
        elapsed = ins.elapsed if ins.elapsed else ins.delays
        refs = [references[i] for i in rec.sentence_indices]
        pieces = mwer_segment(ins.prediction, refs, char_level=(unit == "char"))
        rebase = DelayRebaser(ins.delays, elapsed, unit)
        for i, piece in zip(rec.sentence_indices, pieces):
            seg = segments[i]
            if piece.strip():
                delays, elapseds = rebase(piece, seg.offset * 1000)
            else:
                delays, elapseds = [], []
            out.append(SentenceInstance(piece.strip(), references[i].strip(),
                                        seg.duration * 1000, delays, elapseds))
    return out


def stream_laal(sentences: Sequence[SentenceInstance], unit: str = "word",
                computation_aware: bool = False) -> float:
    """Mean LAAL over the sentences that received words (reference lengths in `unit`)."""
    scores = []
    for s in sentences:
        d = s.elapsed if computation_aware else s.delays
        if d:
            scores.append(length_adaptive_average_lagging(
                d, s.source_length, reference_length(s.reference, unit)))
    if not scores:
        raise ValueError("no sentence received any hypothesis word")
    return mean(scores)
