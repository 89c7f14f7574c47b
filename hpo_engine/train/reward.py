"""The HPO reward of a rollout: per-segment latency and quality of each trajectory (from the metrics
package's segment alignment), gated and z-scored by `rl.hierarchical_reward` (`rollout_rewards`).

hypothesis = the assistant turns joined (no separator for zh/ja); every unit written in answer k
(k = 1..) has delay k x chunk seconds; mWER (or the embedding aligner) resegments it into one piece
per reference sentence;
latency of a piece = `segment_latency` over its units' delays; quality = sentence chrF or BLEU of the
piece against its reference (the metric's worst value for an empty piece).
"""
from __future__ import annotations

from hpo_engine.metrics.embed_align import embedding_aligned_groups
from hpo_engine.metrics.quality import default_bleu_tokenizer, sentence_bleu, sentence_chrf
from hpo_engine.metrics.segment_latency import (AlignedGroup, is_char_language, mwer_aligned_groups,
                                               segment_quality, units_with_delays)
from hpo_engine.metrics.streamlaal import SentenceInstance, stream_laal
from hpo_engine.rl.reward import hierarchical_reward
from hpo_engine.train.rollout import turn_texts


def aligned_groups(turn_texts: list[str], references: list[str], spans, lang: str, chunk_seconds: float,
                   max_latency: float = 10.0, embedder=None) -> list[AlignedGroup]:
    """One group per reference sentence: its piece of the hypothesis, the piece's unit delays (s from
    the window start) and its HPO latency. Pieces by mWER, or with an `embedder` by the vecalign-style
    embedding aligner (hpo_engine.metrics.embed_align)."""
    timed = units_with_delays(turn_texts, lang, chunk_seconds)
    if not timed.units:     # nothing written: every sentence unaligned
        return [AlignedGroup(r, "", [], max_latency) for r in references]
    if embedder is not None:
        return embedding_aligned_groups(timed, references, spans, lang, max_latency, embedder=embedder)
    return mwer_aligned_groups(timed, references, spans, lang, max_latency)


class QualityScorer:
    """Per-segment quality, higher is better: sentence chrF or BLEU (0..100), negated MetricX-24
    (-25..0) or COMET from a local checkpoint (`hpo_engine.metrics.neural`). Empty pieces (nothing
    aligned) get the metric's worst value without being scored."""

    def __init__(self, kind: str = "chrf", lang: str = "de", model_path: str | None = None, device: str = "cpu"):
        self.kind, self.lang = kind, lang
        self.model = None
        if kind == "metricx":
            from hpo_engine.metrics.neural import MetricXScorer
            self.model = MetricXScorer(model_path, device=device)
        elif kind == "comet":
            from hpo_engine.metrics.neural import CometScorer
            self.model = CometScorer(model_path, gpus=int(str(device).startswith("cuda")))
        elif kind not in ("chrf", "bleu"):
            raise ValueError(f"unknown quality metric {kind!r}")

    def __call__(self, pieces: list[str], references: list[str], sources: list[str]) -> list[float]:
        keep = [i for i, p in enumerate(pieces) if p.strip()]
        hyp, ref, src = [pieces[i] for i in keep], [references[i] for i in keep], [sources[i] for i in keep]
        if not keep:
            scores = []
        elif self.kind == "chrf":
            scores = sentence_chrf(hyp, ref)
        elif self.kind == "bleu":
            scores = sentence_bleu(hyp, ref, tokenize=default_bleu_tokenizer(self.lang))
        elif self.kind == "metricx":
            scores = [-x for x in self.model.score(hyp, ref, src)]     # MetricX is an error: negate
        else:
            scores = self.model.score(hyp, ref, src)
        out = [segment_quality(None, self.kind)] * len(pieces)
        for i, v in zip(keep, scores):
            out[i] = float(v)
        return out


def segment_scores(turn_texts: list[str], references: list[str], spans, lang: str, chunk_seconds: float,
                   quality: str | QualityScorer = "chrf", max_latency: float = 10.0,
                   sources: list[str] | None = None) -> tuple[list[float], list[float]]:
    """(quality per reference sentence, latency per reference sentence in seconds)."""
    groups = aligned_groups(turn_texts, references, spans, lang, chunk_seconds, max_latency)
    scorer = quality if isinstance(quality, QualityScorer) else QualityScorer(quality, lang)
    q = scorer([g.piece for g in groups], list(references), list(sources or [""] * len(references)))
    return q, [g.latency for g in groups]


def batch_scores(scorer: QualityScorer, groups: list[list[AlignedGroup]], sources: list[list[str]]):
    """Quality of every trajectory's segments in one scorer call (neural scorers batch): N lists."""
    flat = [(g.piece, g.reference, src) for gs, ss in zip(groups, sources) for g, src in zip(gs, ss)]
    scores = scorer([f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat]) if flat else []
    out, i = [], 0
    for gs in groups:
        out.append(scores[i:i + len(gs)])
        i += len(gs)
    return out


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


def rollout_rewards(samples, windows, codec, scorer: QualityScorer, cfg, embedder=None):
    """The HPO reward of a rollout, composed in one place: measure (each trajectory's piece per
    reference sentence and its latency) -> score (the pieces' quality, one scorer call) -> gate and
    group z-scores (`rl.hierarchical_reward`, groups = windows). Returns (rewards [N], parts)."""
    d, rw = cfg.dialogue, cfg.reward
    groups = [aligned_groups(turn_texts(s, codec), windows[s.window].references, windows[s.window].segments,
                             d.target_lang, d.chunk_seconds, rw.max_latency, embedder) for s in samples]
    quality = batch_scores(scorer, groups, [windows[s.window].sources for s in samples])
    latency = [[g.latency for g in gs] for gs in groups]
    return hierarchical_reward(quality, latency, [s.window for s in samples], alpha=rw.alpha, beta=rw.beta,
                               quality_threshold=rw.quality_threshold, max_latency=rw.max_latency,
                               granularity=rw.granularity, return_parts=True)
