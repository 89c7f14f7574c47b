"""Simultaneous-translation metrics: SimulEval / OmniSTEval / StreamLAAL latency, mWER and soft
resegmentation, sacrebleu quality, optional neural scorers, and the segment alignment and latency of
the HPO reward (segment_latency.py)."""
from .mwer import mwer_segment
from .omnisteval_longform import long_yaal, resegment_soft
from .quality import corpus_bleu, corpus_chrf, corpus_ter, sentence_bleu, sentence_chrf
from .segment_latency import (clause_pieces_with_delays, join_turns, latency_units, mwer_aligned_groups,
                              segment_latency, segment_quality, split_clauses, units_with_delays)
from .scoring import score_longform, score_shortform
from .simuleval_latency import (average_lagging, average_proportion, corpus_latency,
                                differentiable_average_lagging, length_adaptive_average_lagging)
from .streamlaal import resegment_mwer, stream_laal
from .units import prediction_units, reference_length
from .yaal import yaal

__all__ = [
    "average_lagging", "average_proportion", "clause_pieces_with_delays", "corpus_bleu",
    "corpus_chrf", "corpus_latency", "corpus_ter", "differentiable_average_lagging", "join_turns",
    "latency_units", "length_adaptive_average_lagging", "long_yaal", "mwer_aligned_groups",
    "mwer_segment",
    "prediction_units", "reference_length", "resegment_mwer", "resegment_soft", "score_longform",
    "score_shortform", "segment_latency", "segment_quality", "sentence_bleu", "sentence_chrf",
    "split_clauses", "stream_laal", "units_with_delays", "yaal",
]
