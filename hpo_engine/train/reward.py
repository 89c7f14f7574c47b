"""Per-segment quality and latency of a trajectory, from the metrics package's reward pieces.

hypothesis = the assistant turns joined (no separator for zh/ja); every unit written in answer k
(k = 1..) has delay k x chunk seconds; mWER resegments it into one piece per reference sentence;
latency of a piece = `segment_latency` over its units' delays; quality = sentence chrF or BLEU of the
piece against its reference (the metric's worst value for an empty piece).
"""
from __future__ import annotations

from hpo_engine.metrics.quality import default_bleu_tokenizer, sentence_bleu, sentence_chrf
from hpo_engine.metrics.reward import (AlignedGroup, is_char_language, mwer_aligned_groups, segment_quality,
                                       units_with_delays)
from hpo_engine.metrics.streamlaal import SentenceInstance, stream_laal


def aligned_groups(turn_texts: list[str], references: list[str], spans, lang: str, chunk_seconds: float,
                   max_latency: float = 10.0) -> list[AlignedGroup]:
    """One group per reference sentence: its mWER piece of the hypothesis, the piece's unit delays
    (s from the window start) and its HPO latency."""
    timed = units_with_delays(turn_texts, lang, chunk_seconds)
    if not timed.units:     # nothing written: every sentence unaligned
        return [AlignedGroup(r, "", [], max_latency) for r in references]
    return mwer_aligned_groups(timed, references, spans, lang, max_latency)


def segment_scores(turn_texts: list[str], references: list[str], spans, lang: str, chunk_seconds: float,
                   quality: str = "chrf", max_latency: float = 10.0) -> tuple[list[float], list[float]]:
    """(quality per reference sentence, latency per reference sentence in seconds)."""
    groups = aligned_groups(turn_texts, references, spans, lang, chunk_seconds, max_latency)
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


def sentence_instances(groups: list[AlignedGroup], spans) -> list[SentenceInstance]:
    """The groups as StreamLAAL's sentences: delays in ms from each sentence's source start."""
    return [SentenceInstance(g.piece, g.reference, (end - start) * 1000.0,
                             [(d - start) * 1000.0 for d in g.delays], [(d - start) * 1000.0 for d in g.delays])
            for g, (start, end) in zip(groups, spans)]


def window_stream_laal(sentences: list[SentenceInstance], lang: str) -> float | None:
    """StreamLAAL (ms, not computation aware) over the sentences that received units; None if none did."""
    if not any(s.delays for s in sentences):
        return None
    return stream_laal(sentences, unit="char" if is_char_language(lang) else "word")
