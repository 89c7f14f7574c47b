"""Prometheus text exposition of the server's gauges and counters."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# lag behind the speaker: a chunk's last sample arriving -> its translation sent (chunks are ~1.1 s)
LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


@dataclass
class ServerMetrics:
    streams_total: int = 0
    streams_refused: int = 0
    chunks_total: int = 0
    chunk_seconds_sum: float = 0.0
    engine_busy_seconds: float = 0.0     # the engine thread's time in steps (encode + forward + post)
    audio_seconds_total: float = 0.0
    backpressure_waits: int = 0          # times a reader paused because its stream was too far behind
    buffered_seconds_peak: float = 0.0   # most audio one stream ever had accepted but not translated
    error_frames: dict = field(default_factory=dict)     # code -> count
    lag_counts: list = field(default_factory=lambda: [0] * (len(LAG_BUCKETS_S) + 1))   # per bucket, +Inf last
    lag_seconds_sum: float = 0.0

    def count_error(self, code: str) -> None:
        self.error_frames[code] = self.error_frames.get(code, 0) + 1

    def observe_lag(self, seconds: float) -> None:
        self.lag_counts[bisect.bisect_left(LAG_BUCKETS_S, seconds)] += 1
        self.lag_seconds_sum += seconds

    def _lag_histogram(self) -> list[str]:
        lines = ["# HELP hpo_stream_lag_seconds Per chunk of every stream: from its last sample's arrival to its "
                 "translation (the lag behind the speaker).", "# TYPE hpo_stream_lag_seconds histogram"]
        total = 0
        for bound, n in zip([*map(str, LAG_BUCKETS_S), "+Inf"], self.lag_counts):
            total += n
            lines.append(f'hpo_stream_lag_seconds_bucket{{le="{bound}"}} {total}')
        return lines + [f"hpo_stream_lag_seconds_sum {self.lag_seconds_sum:.6f}",
                        f"hpo_stream_lag_seconds_count {total}"]

    def render(self, *, blocks_used: int, blocks_total: int, active_streams: int, max_streams: int,
               capacity: int | None, chunk_compute_s: float | None) -> str:
        lines = [
            "# HELP hpo_kv_blocks_used KV cache blocks held by streams.", "# TYPE hpo_kv_blocks_used gauge",
            f"hpo_kv_blocks_used {blocks_used}",
            "# HELP hpo_kv_blocks_total KV cache blocks in the pool.", "# TYPE hpo_kv_blocks_total gauge",
            f"hpo_kv_blocks_total {blocks_total}",
            "# HELP hpo_active_streams Open translation streams.", "# TYPE hpo_active_streams gauge",
            f"hpo_active_streams {active_streams}",
            "# HELP hpo_streams_total Streams opened.", "# TYPE hpo_streams_total counter",
            f"hpo_streams_total {self.streams_total}",
            "# HELP hpo_max_streams Streams admitted at most (--max-streams, or measured at start).",
            "# TYPE hpo_max_streams gauge", f"hpo_max_streams {max_streams}",
            "# HELP hpo_capacity_streams Streams the engine sustains in real time now (-1: unknown).",
            "# TYPE hpo_capacity_streams gauge", f"hpo_capacity_streams {-1 if capacity is None else capacity}",
            "# HELP hpo_chunk_compute_seconds Engine compute per chunk (the admission estimate; -1: unknown).",
            "# TYPE hpo_chunk_compute_seconds gauge",
            f"hpo_chunk_compute_seconds {-1 if chunk_compute_s is None else round(chunk_compute_s, 6)}",
            "# HELP hpo_streams_refused_total Streams refused (server full or busy, too many connections).",
            "# TYPE hpo_streams_refused_total counter", f"hpo_streams_refused_total {self.streams_refused}",
            "# HELP hpo_chunks_total Speech chunks translated.", "# TYPE hpo_chunks_total counter",
            f"hpo_chunks_total {self.chunks_total}",
            "# HELP hpo_chunk_processing_seconds_sum Wall time from chunk completion to its delta.",
            "# TYPE hpo_chunk_processing_seconds_sum counter",
            f"hpo_chunk_processing_seconds_sum {self.chunk_seconds_sum:.6f}",
            "# HELP hpo_engine_busy_seconds_total The engine thread's time in steps (busy / chunks = compute "
            "per chunk; the rest of a chunk's lag is queueing).", "# TYPE hpo_engine_busy_seconds_total counter",
            f"hpo_engine_busy_seconds_total {self.engine_busy_seconds:.6f}",
            "# HELP hpo_audio_seconds_total Audio received.", "# TYPE hpo_audio_seconds_total counter",
            f"hpo_audio_seconds_total {self.audio_seconds_total:.3f}",
            "# HELP hpo_backpressure_waits_total Reader pauses (a stream's untranslated audio at its limit).",
            "# TYPE hpo_backpressure_waits_total counter", f"hpo_backpressure_waits_total {self.backpressure_waits}",
            "# HELP hpo_buffered_audio_seconds_peak Most untranslated audio one stream held.",
            "# TYPE hpo_buffered_audio_seconds_peak gauge",
            f"hpo_buffered_audio_seconds_peak {self.buffered_seconds_peak:.3f}",
            "# HELP hpo_error_frames_total Error frames sent (and upgrades refused), by code.",
            "# TYPE hpo_error_frames_total counter",
        ]
        lines += [f'hpo_error_frames_total{{code="{code}"}} {n}' for code, n in sorted(self.error_frames.items())]
        lines += self._lag_histogram()
        return "\n".join(lines) + "\n"
