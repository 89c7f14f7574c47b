"""Segment alignment and segment latency of the HPO reward (docs/PAPER.md), as pure functions: a
dialogue's timed units, their pieces per reference sentence (mWER), each piece's latency and the
quality an unaligned piece gets.

Units: words for word languages, characters (whitespace excluded) for zh/ja. Times in seconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

CHAR_LANGUAGES = ("zh", "ja")
WORD_CLAUSE_ENDS = ".,!?"
CHAR_CLAUSE_ENDS = "。，！？"
DEFAULT_MAX_LATENCY = 10.0  # s: the latency of a reference sentence nothing was aligned to
# Worst value of each quality score (higher is better): what an unaligned sentence gets.
WORST_QUALITY = {"metricx": -25.0, "comet": 0.0, "xcomet": 0.0, "bleu": 0.0, "chrf": 0.0}

_WORD_SPLIT = re.compile(r"(?<=[.,!?]) +")
_CHAR_SPLIT = re.compile(r"(?<=[。，！？])(?=[^。，！？])")


def is_char_language(lang: str) -> bool:
    """True for languages whose latency unit is the character (zh, ja)."""
    return lang.lower().split("-")[0] in CHAR_LANGUAGES


def join_turns(turns: Sequence[str], lang: str) -> str:
    """The hypothesis of a dialogue: the assistant turns' texts joined (no separator for zh/ja,
    one space otherwise; empty turns are waits and add nothing)."""
    pieces = [t.strip() for t in turns if t.strip()]
    return ("" if is_char_language(lang) else " ").join(pieces)


def split_clauses(text: str, lang: str) -> List[str]:
    """Clause pieces: split after `.,!?` followed by a space (word languages) or after `。，！？`
    followed by a character that is not one of them (zh/ja). Empty pieces are dropped."""
    pattern = _CHAR_SPLIT if is_char_language(lang) else _WORD_SPLIT
    return [p.strip() for p in pattern.split(text) if p.strip()]


def latency_units(text: str, lang: str) -> List[str]:
    """Words (whitespace split), or non-whitespace characters for zh/ja."""
    if is_char_language(lang):
        return [c for c in text if not c.isspace()]
    return text.split()


@dataclass
class TimedUnits:
    """Units of a hypothesis with the time (s) each became available."""

    units: List[str]
    delays: List[float]


def units_with_delays(turns: Sequence[str], lang: str, chunk_seconds: float) -> TimedUnits:
    """Every unit written in the k-th assistant turn (k = 1, 2, ...) has delay k * chunk_seconds
    (not computation aware), e.g. chunk 1.12 s * multiplier."""
    units: List[str] = []
    delays: List[float] = []
    for k, turn in enumerate(turns, 1):
        new = latency_units(turn, lang)
        units += new
        delays += [k * chunk_seconds] * len(new)
    return TimedUnits(units, delays)


def clause_pieces_with_delays(timed: TimedUnits, lang: str) -> List[Tuple[str, List[float]]]:
    """The clause pieces of a timed hypothesis, each with the delays of its units."""
    pieces: List[Tuple[str, List[float]]] = []
    start = 0
    char_level = is_char_language(lang)
    ends = CHAR_CLAUSE_ENDS if char_level else WORD_CLAUSE_ENDS
    n = len(timed.units)
    for i, unit in enumerate(timed.units):
        last = i == n - 1
        if char_level:
            cut = not last and unit in ends and timed.units[i + 1] not in ends
        else:
            cut = not last and unit[-1] in ends
        if cut or last:
            text = ("" if char_level else " ").join(timed.units[start:i + 1])
            pieces.append((text, timed.delays[start:i + 1]))
            start = i + 1
    return pieces


def segment_latency(start: float, end: float, reference_length: int, delays: Sequence[float],
                    max_latency: float = DEFAULT_MAX_LATENCY) -> float:
    """HPO latency of one aligned group: source span [start, end] (s), reference length R
    (units), delays d_1..d_n (s) of the units aligned to it.

    step = (end - start) / max(R, n); L = (1/n) * sum_j (d_j - step * j - start), j = 1..n.
    A group with no aligned unit gets `max_latency`.
    """
    n = len(delays)
    if n == 0:
        return max_latency
    if end < start:
        raise ValueError(f"segment ends ({end}) before it starts ({start})")
    step = (end - start) / max(reference_length, n)
    return sum(d - step * j - start for j, d in enumerate(delays, 1)) / n


def segment_quality(score: Optional[float], metric: str) -> float:
    """The quality of a group: its score, or the metric's worst value when it is unaligned
    (score None)."""
    if score is not None:
        return score
    try:
        return WORST_QUALITY[metric.lower()]
    except KeyError:
        raise ValueError(f"no worst value known for quality metric {metric!r}") from None


@dataclass
class AlignedGroup:
    """A reference sentence with the hypothesis piece aligned to it and that piece's latency (s)."""

    reference: str
    piece: str
    delays: List[float]
    latency: float


def mwer_aligned_groups(timed: TimedUnits, references: Sequence[str],
                        spans: Sequence[Tuple[float, float]], lang: str,
                        max_latency: float = DEFAULT_MAX_LATENCY) -> List[AlignedGroup]:
    """HPO's mWER variant: split the timed hypothesis into exactly len(references) pieces by mWER
    resegmentation and give each reference sentence (source span [start, end] s) the latency of
    the units aligned to it (`segment_latency`; `max_latency` when none are)."""
    from .mwer import mwer_segment

    if len(spans) != len(references):
        raise ValueError(f"{len(references)} references but {len(spans)} source spans")
    char_level = is_char_language(lang)
    text = ("" if char_level else " ").join(timed.units)
    pieces = mwer_segment(text, references, char_level=char_level)
    groups, used = [], 0
    for reference, piece, (start, end) in zip(references, pieces, spans):
        n = len(latency_units(piece, lang))
        delays = timed.delays[used:used + n]
        used += n
        ref_len = len(latency_units(reference, lang))
        groups.append(AlignedGroup(reference, piece, delays,
                                   segment_latency(start, end, ref_len, delays, max_latency)))
    if used != len(timed.units):
        raise ValueError(f"resegmentation kept {used} of {len(timed.units)} units")
    return groups
