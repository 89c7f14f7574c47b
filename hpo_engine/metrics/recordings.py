"""Group a long-form evaluation's inputs by recording: the segmentation YAML (one entry per
reference sentence) and the log (one line per recording, matched on the `source` file name)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from .instances import LogInstance, MetricsInputError, SegmentDefinition


@dataclass
class Recording:
    """One recording: its log line and its reference sentences (in segmentation order)."""

    name: str
    log: LogInstance
    sentence_indices: List[int]  # positions in the segmentation / reference file


def _keys(name: str) -> List[str]:
    base = os.path.basename(name)
    return [name, base, Path(name).stem, Path(base).stem]


def group_recordings(
    segments: Sequence[SegmentDefinition], references: Sequence[str], log: Sequence[LogInstance],
    log_path: str = "instances.log",
) -> List[Recording]:
    """Recordings in the order they first appear in the segmentation. Each recording's
    sentences must be contiguous there; each must have exactly one log line."""
    if len(segments) != len(references):
        raise MetricsInputError(
            f"{len(references)} reference sentences but {len(segments)} segmentation entries"
        )
    order: List[str] = []
    sentences: Dict[str, List[int]] = {}
    for i, seg in enumerate(segments):
        if not order or order[-1] != seg.wav:
            if seg.wav in sentences:
                raise MetricsInputError(
                    f"segmentation entry {i}: the sentences of {seg.wav!r} are not contiguous"
                )
            order.append(seg.wav)
            sentences[seg.wav] = []
        sentences[seg.wav].append(i)
    by_key: Dict[str, LogInstance] = {}
    for ins in log:
        if ins.source is None:
            raise MetricsInputError(f"{log_path} line {ins.line_number}: missing field 'source'")
        for key in _keys(ins.source):
            if key in by_key and by_key[key] is not ins and key == os.path.basename(ins.source):
                raise MetricsInputError(
                    f"{log_path} line {ins.line_number}: duplicate recording {ins.source!r}"
                )
            by_key.setdefault(key, ins)
    if len(log) != len(order):
        raise MetricsInputError(
            f"{len(log)} log lines in {log_path} but {len(order)} recordings in the segmentation"
        )
    recordings = []
    for wav in order:
        match = next((by_key[k] for k in _keys(wav) if k in by_key), None)
        if match is None:
            raise MetricsInputError(f"no line of {log_path} has source {wav!r}")
        recordings.append(Recording(wav, match, sentences[wav]))
    if len({id(r.log) for r in recordings}) != len(recordings):
        raise MetricsInputError(f"two recordings match the same line of {log_path}")
    return recordings
