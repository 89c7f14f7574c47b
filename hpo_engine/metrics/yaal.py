"""YAAL and LongYAAL exactly as OmniSTEval 0.1.10 computes them (Polak et al. 2025,
"Better Late Than Never", arXiv 2509.17349).

YAAL is LAAL that ignores emissions at or after the end of the source segment (short-form)
or after the end of the whole recording (long-form, "LongYAAL"), and skips a sentence whose
first emission already lies there. Times in ms, lengths in latency units.
"""
from __future__ import annotations

import math
from statistics import mean
from typing import Iterable, Optional, Sequence


def yaal(
    delays: Sequence[float],
    source_length: float,
    target_length: int,
    is_longform: bool = False,
    time_to_recording_end: Optional[float] = None,
) -> Optional[float]:
    """YAAL of one segment, or None when OmniSTEval skips it.

    source_length: segment duration; time_to_recording_end: recording end minus segment start
    (None = unbounded); target_length: reference length (OmniSTEval always uses the reference).
    """
    recording_end = math.inf if time_to_recording_end is None else time_to_recording_end
    if (
        len(delays) == 0
        or (delays[0] >= source_length and not is_longform)
        or delays[0] >= recording_end
    ):
        return None
    if not source_length > 0:
        raise ValueError("YAAL needs a source length > 0")
    total = 0.0
    gamma = max(len(delays), target_length) / source_length
    tau = 0
    for t_minus_1, d in enumerate(delays):
        if (d >= source_length and not is_longform) or d >= recording_end:
            break
        total += d - t_minus_1 / gamma
        tau = t_minus_1 + 1
    return total / tau if tau > 0 else None


def corpus_yaal(scores: Iterable[Optional[float]]) -> float:
    """OmniSTEval's aggregate: exact mean of the non-skipped segments, NaN when none."""
    kept = [s for s in scores if s is not None]
    return mean(kept) if kept else float("nan")
