"""Long-form scoring as `omnisteval longform` 0.1.10 does it: SoftSegmenter resegmentation of
each recording into its reference sentences, then YAAL per sentence with emissions measured
from the sentence start and cut at the end of the recording (LongYAAL). Times in ms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from .instances import LogInstance, MetricsInputError, SegmentDefinition
from .recordings import group_recordings
from .soft_segmenter import Unit, soft_segment, tokenize_units
from .units import prediction_units, reference_length
from .yaal import corpus_yaal, yaal


@dataclass
class LongformSentence:
    """A resegmented sentence as OmniSTEval builds it (emissions relative to its offset)."""

    prediction: str
    reference: str
    source_length: Optional[float]
    emission_cu: Optional[List[float]]
    emission_ca: Optional[List[float]]
    time_to_recording_end: Optional[float]


def repair_elapsed(delays: Sequence[float], elapsed: Sequence[float]) -> List[float]:
    """OmniSTEval `--fix_simuleval_emission_ca`: e'_i = max(e_i - e_{i-1} + d_{i-1}, e'_{i-1})."""
    raw = [elapsed[0]] + [elapsed[i] - elapsed[i - 1] + delays[i - 1] for i in range(1, len(elapsed))]
    fixed: List[float] = []
    for i, value in enumerate(raw):
        fixed.append(value if i == 0 else max(value, fixed[i - 1]))
    return fixed


def resegment_soft(
    log: Sequence[LogInstance], references: Sequence[str], segments: Sequence[SegmentDefinition],
    unit: str = "word", lang: Optional[str] = None, fix_elapsed: bool = False,
    log_path: str = "instances.log",
) -> List[LongformSentence]:
    """One LongformSentence per reference sentence, in segmentation order."""
    char_level = unit == "char"
    refs = [r.strip() for r in references]
    if char_level:
        refs = [r.replace(" ", "") for r in refs]
    offsets = [seg.offset * 1000 for seg in segments]
    durations = [seg.duration * 1000 for seg in segments]
    out: List[Optional[LongformSentence]] = [None] * len(segments)
    for rec in group_recordings(segments, references, log, log_path):
        ins = rec.log
        rec_end = max(offsets[i] + durations[i] for i in rec.sentence_indices)
        ref_units = []
        for i in rec.sentence_indices:
            text = refs[i].strip().lower()
            ref_units += [Unit(u, seq_id=i, emission_cu=offsets[i])
                          for u in (list(text) if char_level else text.split())]
        hyp_texts = prediction_units(ins.prediction, unit)
        cu = ins.delays
        ca = ins.elapsed
        for key, values in (("delays", cu), ("elapsed", ca)):
            if values is not None and len(values) != len(hyp_texts):
                raise MetricsInputError(
                    f"{log_path} line {ins.line_number}: {len(hyp_texts)} {unit}s in the "
                    f"prediction but {len(values)} {key}"
                )
        if fix_elapsed and ca is not None and hyp_texts:
            if cu is None:
                raise MetricsInputError(
                    f"{log_path} line {ins.line_number}: repairing elapsed needs 'delays'")
            ca = repair_elapsed(cu, ca)
        hyp_units = [Unit(t, emission_cu=None if cu is None else cu[k],
                          emission_ca=None if ca is None else ca[k])
                     for k, t in enumerate(hyp_texts)]
        assigned = soft_segment(tokenize_units(ref_units, lang), tokenize_units(hyp_units, lang),
                                char_level)
        per_sentence = {i: [] for i in rec.sentence_indices}
        for u in assigned:
            per_sentence[u.seq_id].append(u)
        for i in rec.sentence_indices:
            words = per_sentence[i]
            parts = [u.original for u in words if u.original is not None]
            emission_cu = emission_ca = None
            if words and all(u.emission_cu is not None for u in words):
                emission_cu = [u.emission_cu - offsets[i] for u in words]
            if words and all(u.emission_ca is not None for u in words):
                emission_ca = [u.emission_ca - offsets[i] for u in words]
            out[i] = LongformSentence(
                prediction=("" if char_level else " ").join(parts),
                reference=refs[i],
                source_length=durations[i] if durations[i] > 0 else None,
                emission_cu=emission_cu,
                emission_ca=emission_ca,
                time_to_recording_end=(rec_end - offsets[i])
                if (emission_cu is not None or emission_ca is not None) else None,
            )
    return out  # type: ignore[return-value]


def long_yaal(sentences: Sequence[LongformSentence], unit: str = "word",
              computation_aware: bool = False) -> float:
    """LongYAAL: mean YAAL (long-form) over sentences with emissions; NaN when none count."""
    scores = []
    for s in sentences:
        em = s.emission_ca if computation_aware else s.emission_cu
        if not em:
            continue
        if s.source_length is None:
            raise ValueError("YAAL needs the source length of every sentence with emissions")
        scores.append(yaal(em, s.source_length, reference_length(s.reference, unit),
                           is_longform=True, time_to_recording_end=s.time_to_recording_end))
    return corpus_yaal(scores)
