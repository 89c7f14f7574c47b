"""Per-segment quality and latency of a trajectory, from the metrics package's reward pieces.

hypothesis = the assistant turns joined (no separator for zh/ja); every unit written in answer k
(k = 1..) has delay k x chunk seconds; mWER resegments it into one piece per reference sentence;
latency of a piece = `segment_latency` over its units' delays; quality = sentence chrF or BLEU of the
piece against its reference (the metric's worst value for an empty piece).
"""
from __future__ import annotations

from hpo_engine.metrics.quality import default_bleu_tokenizer, sentence_bleu, sentence_chrf
from hpo_engine.metrics.reward import (TimedUnits, is_char_language, mwer_aligned_groups, segment_quality,
                                       units_with_delays)


def segment_scores(turn_texts: list[str], references: list[str], spans, lang: str, chunk_seconds: float,
                   quality: str = "chrf", max_latency: float = 10.0) -> tuple[list[float], list[float]]:
    """(quality per reference sentence, latency per reference sentence in seconds)."""
    timed = units_with_delays(turn_texts, lang, chunk_seconds)
    if not timed.units:     # nothing written: every sentence unaligned
        return [segment_quality(None, quality)] * len(references), [max_latency] * len(references)
    groups = mwer_aligned_groups(TimedUnits(timed.units, timed.delays), references, spans, lang, max_latency)
    pieces = [g.piece for g in groups]
    if quality == "chrf":
        scores = sentence_chrf(pieces, list(references))
    else:
        scores = sentence_bleu(pieces, list(references), tokenize=default_bleu_tokenizer(lang))
    q = [segment_quality(s if p.strip() else None, quality) for s, p in zip(scores, pieces)]
    return q, [g.latency for g in groups]


def hypothesis_text(turn_texts: list[str], lang: str) -> str:
    pieces = [t.strip() for t in turn_texts if t.strip()]
    return ("" if is_char_language(lang) else " ").join(pieces)
