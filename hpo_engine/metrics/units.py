"""Latency units and reference lengths, as SimulEval / OmniSTEval / StreamLAAL count them."""
from __future__ import annotations

from typing import List

LATENCY_UNITS = ("word", "char")


def check_unit(unit: str) -> str:
    """Return `unit` if it is a known latency unit, else raise ValueError."""
    if unit not in LATENCY_UNITS:
        raise ValueError(f"unknown latency unit {unit!r}; expected one of {LATENCY_UNITS}")
    return unit


def reference_length(text: str, unit: str) -> int:
    """Length of a reference in latency units, exactly as the community tools count it.

    word: ``len(text.split(" "))`` (so an empty reference counts 1 and double spaces count);
    char: ``len(text.strip())`` (spaces inside the text count).
    """
    if check_unit(unit) == "word":
        return len(text.split(" "))
    return len(text.strip())


def prediction_units(text: str, unit: str) -> List[str]:
    """The units a log's `delays` are attached to: whitespace words, or every character."""
    if check_unit(unit) == "word":
        return text.split()
    return list(text)
