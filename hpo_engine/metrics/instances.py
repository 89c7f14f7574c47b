"""Reading SimulEval `instances.log` (JSONL), reference files and segmentation YAML, with clear
errors (file and line number) for malformed input."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import yaml

from .segmentation_yaml import parse_segmentation
from .units import prediction_units


class MetricsInputError(ValueError):
    """Malformed or inconsistent scoring input; the message names the file and line."""


@dataclass
class LogInstance:
    """One line of a SimulEval log. Times (delays, elapsed, source_length) in ms."""

    index: int
    prediction: str
    delays: Optional[List[float]]
    elapsed: Optional[List[float]]
    source_length: Optional[float]
    reference: Optional[str]
    source: Optional[str]
    line_number: int


def _number_list(value, key: str, where: str) -> List[float]:
    # fast path: only int / float (not bool) and a finite sum; else check element by element
    if isinstance(value, list) and {type(v) for v in value} <= {int, float} and math.isfinite(sum(value)):
        return value
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise MetricsInputError(f"{where}: field {key!r} must be a list of finite numbers")
    return value


def _check_latency(ins: LogInstance, unit: str, monotone: bool, where: str) -> None:
    """The latency fields must describe the prediction: one delay per unit (a shorter list would score
    the unmatched units as if never written), a source length to measure lags against, no negative
    time, and with `monotone` delays that never decrease (a sentence's delays are the source read when
    each unit was written; AL's cut at the source end assumes it. Long-form logs are left alone there:
    the StreamLAAL and OmniSTEval tools take them as they come and resegment by time)."""
    if ins.delays is None:
        return
    units = len(prediction_units(ins.prediction, unit))
    if len(ins.delays) != units:
        raise MetricsInputError(f"{where}: {units} {unit}s in the prediction but {len(ins.delays)} delays "
                                f"(field 'delays' needs one per {unit}; is {unit} the log's latency unit?)")
    if ins.source_length is None:
        raise MetricsInputError(f"{where}: missing field 'source_length' (needed with 'delays')")
    if not math.isfinite(ins.source_length) or ins.source_length < 0:
        raise MetricsInputError(f"{where}: field 'source_length' must be a finite number >= 0 (ms), "
                                f"got {ins.source_length}")
    for key in ("delays", "elapsed"):
        values = getattr(ins, key) or []
        if any(v < 0 for v in values):
            raise MetricsInputError(f"{where}: field {key!r} holds a negative time ({min(values)} ms)")
    for k in range(1, len(ins.delays) if monotone else 0):
        if ins.delays[k] < ins.delays[k - 1]:
            raise MetricsInputError(f"{where}: field 'delays' decreases at position {k} ({ins.delays[k]} after "
                                    f"{ins.delays[k - 1]}); delays are the source ms read when each unit was "
                                    "written, so they never decrease")


def _parse_line(text: str, line_number: int, path: str, position: int) -> LogInstance:
    where = f"{path} line {line_number}"
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise MetricsInputError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(info, dict):
        raise MetricsInputError(f"{where}: expected a JSON object, got {type(info).__name__}")
    if "prediction" not in info:
        raise MetricsInputError(f"{where}: missing field 'prediction'")
    if not isinstance(info["prediction"], str):
        raise MetricsInputError(f"{where}: field 'prediction' must be a string")
    delays = _number_list(info["delays"], "delays", where) if info.get("delays") is not None else None
    elapsed = (
        _number_list(info["elapsed"], "elapsed", where) if info.get("elapsed") is not None else None
    )
    if delays is not None and elapsed and len(elapsed) != len(delays):
        raise MetricsInputError(
            f"{where}: {len(elapsed)} elapsed values but {len(delays)} delays"
        )
    source_length = info.get("source_length")
    if source_length is not None and (
        not isinstance(source_length, (int, float)) or isinstance(source_length, bool)
    ):
        raise MetricsInputError(f"{where}: field 'source_length' must be a number")
    reference = info.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise MetricsInputError(f"{where}: field 'reference' must be a string")
    source = info.get("source")
    if isinstance(source, list):
        source = source[0] if source else None
    if source is not None and not isinstance(source, str):
        raise MetricsInputError(f"{where}: field 'source' must be a string or a list of strings")
    index = info.get("index", position)
    return LogInstance(index, info["prediction"], delays, elapsed, source_length, reference, source,
                       line_number)


def read_instances_log(path: Union[str, Path], unit: Optional[str] = None,
                       monotone_delays: bool = False) -> List[LogInstance]:
    """Parse a SimulEval instances.log (one JSON object per line; blank lines ignored). With the latency
    `unit`, the latency fields are also checked against the prediction (see _check_latency)."""
    path = str(path)
    instances: List[LogInstance] = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                instances.append(_parse_line(line, line_number, path, len(instances)))
                if unit is not None:
                    _check_latency(instances[-1], unit, monotone_delays, f"{path} line {line_number}")
    if not instances:
        raise MetricsInputError(f"{path}: no instances (the log is empty)")
    return instances


def read_references(path: Union[str, Path]) -> List[str]:
    """One reference sentence per line (surrounding whitespace stripped, as the tools do)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]


def attach_references(
    instances: Sequence[LogInstance], references: Optional[Sequence[str]], log_path: str
) -> List[str]:
    """The reference of each instance: from `references` (counts must match) or, failing
    that, from each log line's `reference` field (every line must have one)."""
    if references is not None:
        if len(references) != len(instances):
            raise MetricsInputError(
                f"{len(references)} references but {len(instances)} hypothesis lines in {log_path}"
            )
        return list(references)
    missing = [ins.line_number for ins in instances if ins.reference is None]
    if missing:
        raise MetricsInputError(
            f"{log_path} line {missing[0]}: missing field 'reference' (and no --references given)"
        )
    return [ins.reference for ins in instances]


@dataclass
class SegmentDefinition:
    """One reference sentence's audio span. offset / duration in seconds, as in the YAML."""

    wav: str
    offset: float
    duration: float


def read_segmentation(path: Union[str, Path]) -> List[SegmentDefinition]:
    """MuST-C / IWSLT segmentation YAML: a list of {wav, offset, duration} per reference line."""
    path = str(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    data = parse_segmentation(text)  # the common flat shapes, without PyYAML's slow constructor
    if data is None:
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as err:
            raise MetricsInputError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, list):
        raise MetricsInputError(f"{path}: expected a list of segments")
    segments = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise MetricsInputError(f"{path}: segment {i} is not a mapping")
        for key in ("wav", "offset", "duration"):
            if key not in entry:
                raise MetricsInputError(f"{path}: segment {i} is missing field {key!r}")
        for key in ("offset", "duration"):
            value = entry[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise MetricsInputError(f"{path}: segment {i} field {key!r} must be a number (seconds)")
        segments.append(SegmentDefinition(str(entry["wav"]), entry["offset"], entry["duration"]))
    return segments


def recording_name(path: str) -> str:
    """The key a log's `source` and a segmentation's `wav` are matched on: the base name."""
    return os.path.basename(path)
