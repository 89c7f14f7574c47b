"""Quality through sacrebleu: BLEU, chrF and TER, corpus and sentence level.

Tokenizers: 13a (default), zh, char, ja-mecab (needs mecab-python3 + ipadic), and the rest of
sacrebleu's. `default_bleu_tokenizer` picks the usual one for a target language.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF
from sacrebleu.metrics.ter import TER

from .fast_bleu import fast_corpus_bleu


def default_bleu_tokenizer(lang: Optional[str]) -> str:
    """zh -> 'zh', ja -> 'ja-mecab', ko -> 'ko-mecab', anything else -> '13a'."""
    return {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}.get((lang or "").lower(), "13a")


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100), identical to sacrebleu's (counted by `fast_bleu`)."""
    _check(hypotheses, references)
    return fast_corpus_bleu(hypotheses, references, tokenize)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: char order 6, beta 2, no word n-grams)."""
    _check(hypotheses, references)
    return CHRF().corpus_score(list(hypotheses), [list(references)]).score


def corpus_ter(hypotheses: Sequence[str], references: Sequence[str], asian_support: bool = False) -> float:
    """Corpus TER (0-100+, lower is better)."""
    _check(hypotheses, references)
    return TER(asian_support=asian_support).corpus_score(list(hypotheses), [list(references)]).score


def sentence_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> List[float]:
    """Per-sentence BLEU with sacrebleu's sentence-level smoothing (exp)."""
    _check(hypotheses, references)
    metric = BLEU(tokenize=tokenize, effective_order=True)
    return [metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


def sentence_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> List[float]:
    """Per-sentence chrF."""
    _check(hypotheses, references)
    metric = CHRF()
    return [metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


def sentence_ter(hypotheses: Sequence[str], references: Sequence[str]) -> List[float]:
    """Per-sentence TER."""
    _check(hypotheses, references)
    metric = TER()
    return [metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


QUALITY_METRICS = ("BLEU", "chrF", "TER")


def corpus_quality(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a",
                   metrics: Sequence[str] = QUALITY_METRICS) -> Dict[str, float]:
    """The chosen corpus scores among BLEU, chrF and TER, in that order."""
    unknown = set(metrics) - set(QUALITY_METRICS)
    if unknown:
        raise ValueError(f"unknown quality metrics {sorted(unknown)}; expected {QUALITY_METRICS}")
    scores: Dict[str, float] = {}
    if "BLEU" in metrics:
        scores["BLEU"] = corpus_bleu(hypotheses, references, tokenize)
    if "chrF" in metrics:
        scores["chrF"] = corpus_chrf(hypotheses, references)
    if "TER" in metrics:
        scores["TER"] = corpus_ter(hypotheses, references, asian_support=tokenize in ("zh", "ja-mecab"))
    return scores
