"""Training windows: a JSONL manifest, its validation, and a resumable loader.

One manifest line (JSONL; or one row of a parquet file, list columns as lists or JSON text) is one
window of a long recording:

    {"id": "talk1-0003",
     "features": "feats/talk1.npy",        # precomputed speech embeddings (path relative to the manifest)
     "features_row": 3,                    # optional: row of a 3-D array [rows, frames, dim]
     "frame_start": 0, "frame_end": 840,   # optional: frame range of a 2-D array [frames, dim]
     "window_start": 201.6, "window_end": 268.8,   # seconds in the recording
     "segments": [{"start": 0.4, "end": 7.9}, ...], # per-sentence source times, seconds from window_start
     "src_segments": ["...", ...], "tgt_segments": ["...", ...],
     "target_lang": "zh"}                   # optional (SFT): this window's language, else dialogue.target_lang

The paper's parquet column names are accepted as aliases (`audio_npy_path`, `audio_npy_row`,
`segment_info`; `audio_duration` when window_start/end are absent). A line may name `audio`
instead of features: the trainer then cuts [window_start, window_end] from the file and runs the SST
checkpoint's streaming encoder over it, as serving would (so it needs an SST checkpoint).
Features are rows of whatever the model's speech input takes: LLM-width embeddings for a plain LLM,
encoder frames (`stack` rows per embedding, projected in training) for an SST checkpoint.
Errors name the file, the line and the field.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALIASES = {"audio_npy_path": "features", "audio_npy_row": "features_row", "segment_info": "segments"}
KNOWN = {"id", "features", "features_row", "frame_start", "frame_end", "audio", "window_start", "window_end",
         "audio_duration", "segments", "src_segments", "tgt_segments", "chunk_frame_size", "target_lang"}


class ManifestError(ValueError):
    pass


@dataclass
class WindowRecord:
    """One validated manifest line (speech not loaded yet)."""
    id: str
    features: Path | None
    features_row: int | None
    frame_start: int | None
    frame_end: int | None
    audio: Path | None
    window_start: float
    window_end: float
    segments: list[tuple[float, float]]
    sources: list[str]
    references: list[str]
    target_lang: str | None = None     # None: the run's dialogue.target_lang


@dataclass
class Window:
    """A window ready for a rollout: its speech rows, chunk after chunk, and chunk k's placeholders."""
    id: str
    embeds: np.ndarray                 # [rows, dim] float32: chunk 0's rows, then chunk 1's, ...
    num_chunks: int
    segments: list[tuple[float, float]]
    sources: list[str]
    references: list[str]
    placeholders: list[int]            # per chunk: its user turn's placeholders (rows / rows_per_placeholder)
    target_lang: str | None = None     # None: the run's dialogue.target_lang

    def chunk_starts(self) -> list[int]:
        """Placeholder offset of each chunk and, last, the total."""
        return [0, *itertools.accumulate(self.placeholders)]


def _number(rec: dict, key: str, where: str, integer=False):
    v = rec[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
        raise ManifestError(f"{where}: field {key!r} must be {'an integer' if integer else 'a number'}, got {v!r}")
    return v


def parse_line(rec, where: str, base: Path) -> WindowRecord:
    if not isinstance(rec, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    rec = {ALIASES.get(k, k): v for k, v in rec.items()}
    unknown = sorted(set(rec) - KNOWN)
    if unknown:
        raise ManifestError(f"{where}: unknown field {unknown[0]!r}")
    if ("features" in rec) == ("audio" in rec):
        raise ManifestError(f"{where}: field 'features' (or 'audio'): give exactly one of them")
    for key in ("features", "audio"):
        if key in rec and not isinstance(rec[key], str):
            raise ManifestError(f"{where}: field {key!r} must be a path string, got {rec[key]!r}")
    row = _number(rec, "features_row", where, integer=True) if rec.get("features_row") is not None else None
    f0 = _number(rec, "frame_start", where, integer=True) if "frame_start" in rec else None
    f1 = _number(rec, "frame_end", where, integer=True) if "frame_end" in rec else None
    if f0 is not None and f1 is not None and not 0 <= f0 < f1:
        raise ManifestError(f"{where}: field 'frame_end' must be > frame_start >= 0, got {f0}..{f1}")
    if "window_start" in rec or "window_end" in rec:
        for key in ("window_start", "window_end"):
            if key not in rec:
                raise ManifestError(f"{where}: field {key!r} is missing")
        w0, w1 = _number(rec, "window_start", where), _number(rec, "window_end", where)
    elif "audio_duration" in rec:
        w0, w1 = 0.0, _number(rec, "audio_duration", where)
    else:
        raise ManifestError(f"{where}: field 'window_start' is missing (or give 'audio_duration')")
    if not w1 > w0:
        raise ManifestError(f"{where}: field 'window_end' must be > window_start, got {w0}..{w1}")
    for key in ("segments", "src_segments", "tgt_segments"):
        if not isinstance(rec.get(key), list) or not rec[key]:
            raise ManifestError(f"{where}: field {key!r} must be a non-empty list")
    n = len(rec["tgt_segments"])
    for key in ("segments", "src_segments"):
        if len(rec[key]) != n:
            raise ManifestError(f"{where}: field {key!r} has {len(rec[key])} entries but tgt_segments has {n}")
    spans = []
    for i, seg in enumerate(rec["segments"]):
        if not (isinstance(seg, dict) and "start" in seg and "end" in seg):
            raise ManifestError(f"{where}: field 'segments[{i}]' must be {{start, end}}, got {seg!r}")
        s, e = _number(seg, "start", f"{where}: segments[{i}]"), _number(seg, "end", f"{where}: segments[{i}]")
        if not 0 <= s <= e:
            raise ManifestError(f"{where}: field 'segments[{i}]' needs 0 <= start <= end, got {s}..{e}")
        spans.append((float(s), float(e)))
    for key in ("src_segments", "tgt_segments"):
        for i, text in enumerate(rec[key]):
            if not isinstance(text, str) or not text.strip():
                raise ManifestError(f"{where}: field '{key}[{i}]' must be a non-empty string, got {text!r}")
    lang = rec.get("target_lang")
    if lang is not None and (not isinstance(lang, str) or not lang):
        raise ManifestError(f"{where}: field 'target_lang' must be a language code string, got {lang!r}")
    return WindowRecord(
        id=str(rec.get("id", where)),
        features=(base / rec["features"]) if "features" in rec else None, features_row=row,
        frame_start=f0, frame_end=f1, audio=(base / rec["audio"]) if "audio" in rec else None,
        window_start=float(w0), window_end=float(w1), segments=spans,
        sources=list(rec["src_segments"]), references=list(rec["tgt_segments"]), target_lang=lang)


def _manifest_rows(path: Path):
    """(where, object) per manifest row: JSONL lines (blank ones skipped) or parquet rows."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ManifestError(f"{path}: reading parquet manifests needs pyarrow (pip install pyarrow)") from None
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            for key in ("segments", "segment_info", "src_segments", "tgt_segments"):
                if isinstance(row.get(key), str):    # list columns are often stored as JSON text
                    try:
                        row[key] = json.loads(row[key])
                    except json.JSONDecodeError as exc:
                        raise ManifestError(f"{path}:row {i}: field {key!r} is not valid JSON: {exc.msg}") from None
            yield f"{path}:row {i}", row
        return
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None


def read_manifest(path) -> list[WindowRecord]:
    """Parse and check every row of a JSONL or parquet manifest; files named are checked to exist."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    records = []
    for where, rec in _manifest_rows(path):
        record = parse_line(rec, where, path.parent)
        speech = record.features or record.audio
        if not speech.is_file():
            raise ManifestError(f"{where}: field {'features' if record.features else 'audio'!r}: {speech} not found")
        records.append(record)
    if not records:
        raise ManifestError(f"{path}: no windows")
    return records


def load_window(rec: WindowRecord, frames_per_chunk: int, max_chunks: int, encode_audio=None,
                rows_per_placeholder: int = 1, chunk_rows=None) -> Window:
    """The window's speech as at most `max_chunks` chunks of `frames_per_chunk` rows (last one
    zero-padded), `frames_per_chunk / rows_per_placeholder` placeholders each (a projector stacks
    rows_per_placeholder frames into one embedding). `encode_audio(path, start_s, end_s) -> [frames, dim]`
    turns an `audio` line into rows. `chunk_rows(list of [frames_per_chunk, dim] (the last one shorter),
    ends_talk) -> list of [n_k, d]` (a CTC bridge, a transcriber) replaces each chunk's frames by its
    variable number of rows, one per placeholder."""
    if rec.features is None:
        if encode_audio is None:
            raise ManifestError(f"window {rec.id}: field 'audio' needs a speech encoder (train from an SST "
                                "checkpoint) or precomputed 'features'")
        arr = np.asarray(encode_audio(rec.audio, rec.window_start, rec.window_end), dtype=np.float32)
    else:
        arr = np.load(rec.features, mmap_mode="r")
    if rec.features_row is not None:
        if arr.ndim != 3 or not 0 <= rec.features_row < arr.shape[0]:
            raise ManifestError(f"window {rec.id}: field 'features_row' = {rec.features_row} does not index "
                                f"{rec.features} of shape {arr.shape}")
        arr = arr[rec.features_row]
    if arr.ndim != 2:
        raise ManifestError(f"window {rec.id}: {rec.features} must hold [frames, dim] rows, got shape {arr.shape}")
    arr = arr[rec.frame_start or 0: rec.frame_end]
    if arr.shape[0] == 0:
        raise ManifestError(f"window {rec.id}: field 'frame_end': empty frame range")
    num_chunks = min(max_chunks, -(-arr.shape[0] // frames_per_chunk))
    out = np.zeros((num_chunks * frames_per_chunk, arr.shape[1]), dtype=np.float32)
    take = min(len(out), arr.shape[0])
    out[:take] = arr[:take]
    if chunk_rows is not None:      # the chunks as served: the last one short, final if the talk ends there
        ends_talk = take == arr.shape[0] and rec.frame_end is None
        chunks = np.split(out[:take], range(frames_per_chunk, take, frames_per_chunk))
        rows = [np.asarray(r, dtype=np.float32) for r in chunk_rows(chunks, ends_talk)]
        return Window(rec.id, np.concatenate(rows), num_chunks, rec.segments, rec.sources, rec.references,
                      [len(r) for r in rows], rec.target_lang)
    return Window(rec.id, out, num_chunks, rec.segments, rec.sources, rec.references,
                  [frames_per_chunk // rows_per_placeholder] * num_chunks, rec.target_lang)


class WindowLoader:
    """Endless, resumable stream of windows: a seeded permutation per epoch; its position is
    (epoch, index) so that a resumed run draws exactly the windows it would have drawn."""

    def __init__(self, records: list[WindowRecord], frames_per_chunk: int, chunks_per_window: int,
                 seed: int = 0, shuffle: bool = True, **window_options):
        self.records, self.P, self.N = records, frames_per_chunk, chunks_per_window
        self.window_options = window_options      # load_window's encode_audio, rows_per_placeholder, chunk_rows
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.index = 0, 0

    def _order(self) -> np.ndarray:
        n = len(self.records)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def next_batch(self, n: int) -> list[Window]:
        out = []
        while len(out) < n:
            if self.index >= len(self.records):
                self.epoch, self.index = self.epoch + 1, 0
            rec = self.records[int(self._order()[self.index])]
            self.index += 1
            out.append(load_window(rec, self.P, self.N, **self.window_options))
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
