"""SFT trajectories from (speech window, sentence times, translations) by a monotonic rule.

Rule (k = `lag_chunks`, c = chunk seconds, chunk j is answered in assistant turn j):
sentence i with source span [s_i, e_i] gets the chunks a_i = floor(s_i / c) + k .. b_i =
max(a_i, ceil(e_i / c) - 1 + k), both clipped to the window's last chunk, and a_i raised to the
last chunk used by sentence i - 1 (output never goes back in time). Its n_i units (words; characters
for zh/ja) are spread evenly: unit j (0-based) goes to chunk a_i + floor(j (b_i - a_i + 1) / n_i).
Every answer ends with the stop token; a chunk with no units is a wait (a bare stop token).
"""
from __future__ import annotations

import math

from hpo_engine.metrics.segment_latency import is_char_language, latency_units


def monotonic_schedule(spans, references, num_chunks: int, chunk_seconds: float, lag_chunks: int,
                       lang: str) -> list[list[str]]:
    """The units each chunk's answer holds."""
    per_chunk: list[list[str]] = [[] for _ in range(num_chunks)]
    last = 0
    for (start, end), ref in zip(spans, references):
        units = latency_units(ref, lang)
        if not units:
            continue
        a = min(max(int(math.floor(start / chunk_seconds)) + lag_chunks, last), num_chunks - 1)
        b = min(max(a, int(math.ceil(end / chunk_seconds)) - 1 + lag_chunks), num_chunks - 1)
        n = len(units)
        for j, u in enumerate(units):
            per_chunk[a + (j * (b - a + 1)) // n].append(u)
        last = b
    return per_chunk


def sft_answers(window, codec, chunk_seconds: float, lag_chunks: int, lang: str, stop_id: int) -> list[list[int]]:
    """Token ids of each assistant turn (stop token included) for one window."""
    sep = "" if is_char_language(lang) else " "
    answers, written = [], False
    for units in monotonic_schedule(window.segments, window.references, window.num_chunks, chunk_seconds,
                                    lag_chunks, lang):
        text = sep.join(units)
        if text and written and sep and codec.tokenizer is not None:
            text = " " + text      # a subword tokenizer needs the space between words of two turns
        written = written or bool(text)
        answers.append((codec.encode(text) if text else []) + [stop_id])
    return answers
