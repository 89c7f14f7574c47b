"""Whole evaluations behind `hpo-engine score`: short-form (one log line per sentence) and
long-form (one log line per recording, resegmented into reference sentences).

Keys follow the tools: BLEU, chrF, TER (sacrebleu); AL, LAAL, DAL, AP and *_CA (SimulEval);
YAAL, YAAL_CA, LongYAAL, LongYAAL_CA (OmniSTEval); StreamLAAL, StreamLAAL_CA (StreamLAAL script).
Latencies in ms (the log's unit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .instances import (attach_references, read_instances_log,
                        read_references, read_segmentation)
from .omnisteval_longform import long_yaal, repair_elapsed, resegment_soft
from .quality import QUALITY_METRICS, corpus_quality, default_bleu_tokenizer
from .simuleval_latency import LATENCY_METRICS, corpus_latency
from .streamlaal import resegment_mwer, stream_laal
from .units import check_unit, reference_length
from .yaal import corpus_yaal, yaal


@dataclass
class _Scored:
    delays: Optional[List[float]]
    elapsed: Optional[List[float]]
    source_length: Optional[float]
    reference: Optional[str]


def score_shortform(hypothesis: str, references: Optional[str] = None, unit: str = "word",
                    bleu_tokenizer: str = "13a", use_ref_len: bool = True,
                    fix_elapsed: bool = False,
                    quality: Sequence[str] = QUALITY_METRICS) -> Dict[str, float]:
    """Quality and latency of a sentence-level SimulEval log.

    fix_elapsed applies OmniSTEval's elapsed repair to YAAL_CA only (SimulEval's *_CA use the
    raw elapsed, as SimulEval does)."""
    check_unit(unit)
    log = read_instances_log(hypothesis, unit, monotone_delays=True)
    refs = attach_references(log, None if references is None else read_references(references),
                             hypothesis)
    scores = corpus_quality([i.prediction for i in log], refs, bleu_tokenizer, quality)
    scored = [_Scored(ins.delays, ins.elapsed, ins.source_length, ref) for ins, ref in zip(log, refs)]
    if not any(s.delays for s in scored):
        return scores
    for metric in LATENCY_METRICS:
        scores[metric] = corpus_latency(metric, scored, unit, False, use_ref_len)
    has_elapsed = any(s.elapsed for s in scored)
    if has_elapsed:
        for metric in LATENCY_METRICS:
            scores[metric + "_CA"] = corpus_latency(metric, scored, unit, True, use_ref_len)
    scores["YAAL"] = corpus_yaal(
        yaal(s.delays, s.source_length, reference_length(s.reference, unit)) for s in scored if s.delays)
    if has_elapsed:
        ca = []
        for s in scored:
            if not s.elapsed:
                continue
            em = repair_elapsed(s.delays, s.elapsed) if fix_elapsed and s.delays else s.elapsed
            ca.append(yaal(em, s.source_length, reference_length(s.reference, unit)))
        scores["YAAL_CA"] = corpus_yaal(ca)
    return scores


def score_longform(hypothesis: str, references: str, segmentation: str, lang: str,
                   segmenter: str = "mwer", unit: str = "word",
                   bleu_tokenizer: Optional[str] = None, moses: bool = True,
                   fix_elapsed: bool = False,
                   quality: Sequence[str] = QUALITY_METRICS) -> Dict[str, float]:
    """Quality and latency of a long-form log (one line per recording).

    mwer: the StreamLAAL script's resegmentation and StreamLAAL(_CA); soft: OmniSTEval's
    SoftSegmenter (Moses-tokenized unless `moses` is False or lang is zh/ja) and LongYAAL(_CA)."""
    check_unit(unit)
    tokenizer = bleu_tokenizer or default_bleu_tokenizer(lang)
    log = read_instances_log(hypothesis, unit)
    refs = read_references(references)
    segments = read_segmentation(segmentation)
    if segmenter == "mwer":
        sentences = resegment_mwer(log, refs, segments, unit, hypothesis)
        scores = corpus_quality([s.prediction for s in sentences], [s.reference for s in sentences],
                                tokenizer, quality)
        scores["StreamLAAL"] = stream_laal(sentences, unit)
        if all(ins.elapsed for ins in log if ins.delays):
            scores["StreamLAAL_CA"] = stream_laal(sentences, unit, computation_aware=True)
        return scores
    if segmenter == "soft":
        sentences = resegment_soft(log, refs, segments, unit, lang if moses else None,
                                   fix_elapsed, hypothesis)
        scores = corpus_quality([s.prediction for s in sentences], [s.reference for s in sentences],
                                tokenizer, quality)
        if any(s.emission_cu for s in sentences):
            scores["LongYAAL"] = long_yaal(sentences, unit)
        if any(s.emission_ca for s in sentences):
            scores["LongYAAL_CA"] = long_yaal(sentences, unit, computation_aware=True)
        return scores
    raise ValueError(f"unknown segmenter {segmenter!r}; expected 'mwer' or 'soft'")


# The IWSLT 2026 simultaneous track's latency regimes, in ms of (non computation-aware) LongYAAL.
IWSLT2026_REGIMES = (("low latency (0-2 s)", 0.0, 2000.0), ("high latency (2-4 s)", 2000.0, 4000.0))


def latency_regime(latency_ms: Optional[float]) -> str:
    """The track's regime a system falls in, by its latency in ms."""
    if latency_ms is None or latency_ms != latency_ms:
        return "none (no latency)"
    for name, low, high in IWSLT2026_REGIMES:
        if low <= latency_ms <= high:
            return name
    return "outside the track's regimes (over 4 s)"


def score_iwslt2026(hypothesis: str, references: str, segmentation: str, lang: str,
                    comet_path: Optional[str] = None, sources: Optional[str] = None,
                    fix_elapsed: bool = False, comet_gpus: int = 0) -> Dict[str, object]:
    """What the IWSLT 2026 simultaneous track reports for a long-form log, in one call:

    - OmniSTEval's flow: SoftSegmenter resegmentation, then BLEU and chrF of the resegmented
      sentences and LongYAAL / LongYAAL_CA;
    - StreamLAAL / StreamLAAL_CA over the mWER resegmentation (the 2025 track's latency);
    - COMET (xCOMET-XL or any COMET checkpoint) of the soft-resegmented sentences when
      `comet_path` is given, with `sources` (one source sentence per reference line) when the
      model needs them;
    - the latency regime (by LongYAAL) the system falls in.
    """
    from .segment_latency import is_char_language

    unit = "char" if is_char_language(lang) else "word"
    log = read_instances_log(hypothesis, unit)
    refs, segments = read_references(references), read_segmentation(segmentation)
    soft = resegment_soft(log, refs, segments, unit, lang, fix_elapsed, hypothesis)
    scores: Dict[str, object] = corpus_quality([x.prediction for x in soft], [x.reference for x in soft],
                                               default_bleu_tokenizer(lang), ("BLEU", "chrF"))
    if any(x.emission_cu for x in soft):
        scores["LongYAAL"] = long_yaal(soft, unit)
    if any(x.emission_ca for x in soft):
        scores["LongYAAL_CA"] = long_yaal(soft, unit, computation_aware=True)
    mwer = score_longform(hypothesis, references, segmentation, lang, "mwer", unit, quality=())
    scores.update({k: v for k, v in mwer.items() if k.startswith("StreamLAAL")})
    if comet_path:
        from .neural import CometScorer
        src = read_references(sources) if sources else None
        if src is not None and len(src) != len(refs):
            raise ValueError(f"--sources has {len(src)} lines, --references {len(refs)}: one source per reference")
        segment_scores = CometScorer(comet_path, gpus=comet_gpus).score(
            [x.prediction for x in soft], [x.reference for x in soft], src or [""] * len(soft))
        scores["COMET"] = 100.0 * sum(segment_scores) / max(len(segment_scores), 1)
    scores["latency_regime"] = latency_regime(scores.get("LongYAAL"))
    if "LongYAAL_CA" in scores:
        scores["latency_regime_CA"] = latency_regime(scores["LongYAAL_CA"])
    return scores
