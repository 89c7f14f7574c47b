"""Prometheus text exposition of the server's gauges and counters."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerMetrics:
    streams_total: int = 0
    streams_refused: int = 0
    chunks_total: int = 0
    chunk_seconds_sum: float = 0.0
    audio_seconds_total: float = 0.0
    backpressure_waits: int = 0          # times a reader paused because its stream was too far behind
    buffered_seconds_peak: float = 0.0   # most audio one stream ever had accepted but not translated
    error_frames: dict = field(default_factory=dict)     # code -> count

    def count_error(self, code: str) -> None:
        self.error_frames[code] = self.error_frames.get(code, 0) + 1

    def render(self, *, blocks_used: int, blocks_total: int, active_streams: int) -> str:
        lines = [
            "# HELP hpo_kv_blocks_used KV cache blocks held by streams.", "# TYPE hpo_kv_blocks_used gauge",
            f"hpo_kv_blocks_used {blocks_used}",
            "# HELP hpo_kv_blocks_total KV cache blocks in the pool.", "# TYPE hpo_kv_blocks_total gauge",
            f"hpo_kv_blocks_total {blocks_total}",
            "# HELP hpo_active_streams Open translation streams.", "# TYPE hpo_active_streams gauge",
            f"hpo_active_streams {active_streams}",
            "# HELP hpo_streams_total Streams opened.", "# TYPE hpo_streams_total counter",
            f"hpo_streams_total {self.streams_total}",
            "# HELP hpo_streams_refused_total Streams refused (server full).",
            "# TYPE hpo_streams_refused_total counter", f"hpo_streams_refused_total {self.streams_refused}",
            "# HELP hpo_chunks_total Speech chunks translated.", "# TYPE hpo_chunks_total counter",
            f"hpo_chunks_total {self.chunks_total}",
            "# HELP hpo_chunk_processing_seconds_sum Wall time from chunk completion to its delta.",
            "# TYPE hpo_chunk_processing_seconds_sum counter",
            f"hpo_chunk_processing_seconds_sum {self.chunk_seconds_sum:.6f}",
            "# HELP hpo_audio_seconds_total Audio received.", "# TYPE hpo_audio_seconds_total counter",
            f"hpo_audio_seconds_total {self.audio_seconds_total:.3f}",
            "# HELP hpo_backpressure_waits_total Reader pauses (a stream's untranslated audio at its limit).",
            "# TYPE hpo_backpressure_waits_total counter", f"hpo_backpressure_waits_total {self.backpressure_waits}",
            "# HELP hpo_buffered_audio_seconds_peak Most untranslated audio one stream held.",
            "# TYPE hpo_buffered_audio_seconds_peak gauge",
            f"hpo_buffered_audio_seconds_peak {self.buffered_seconds_peak:.3f}",
            "# HELP hpo_error_frames_total Error frames sent, by code.", "# TYPE hpo_error_frames_total counter",
        ]
        lines += [f'hpo_error_frames_total{{code="{code}"}} {n}' for code, n in sorted(self.error_frames.items())]
        return "\n".join(lines) + "\n"
