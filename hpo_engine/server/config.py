"""Server settings (`hpo-engine serve` options)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None              # bearer token; None = open
    max_streams: int | None = None        # concurrent streams; None = what the machine sustains, measured at start
    max_load: float = 0.8                 # admit a stream only while the engine's compute per chunk, times the
                                          # streams, stays under this fraction of the chunk's audio (0: no check)
    max_message_bytes: int = 1 << 20      # larger frames get an error frame (the stream goes on)
    max_connection_buffer_bytes: int = 8 << 20   # received bytes one connection may hold (frames queued or being read)
    max_duration_s: float = 3600.0        # audio per stream; then the stream is finished
    max_stream_s: float = 7200.0          # wall-clock time per stream; then the stream is finished
    min_audio_rate: float = 0.5           # audio s per wall s over audio_rate_window_s, else the stream is finished
    audio_rate_window_s: float = 30.0     #   (time the server itself held the reader back does not count)
    idle_timeout_s: float = 30.0          # no frame for this long: the stream is finished
    max_connections_per_address: int = 8  # open connections from one client address
    allow_origins: tuple = ()             # browser origins allowed besides the server's own ("*": any)
    max_buffered_ms: float = 4000.0       # audio accepted but not yet translated; beyond it reading stops
    max_new_tokens: int | None = None     # per turn (default: the checkpoint's)
    drain_timeout_s: float = 60.0         # SIGTERM: time given to open streams to finish

    def __post_init__(self):
        for name in ("max_message_bytes", "max_duration_s", "max_stream_s", "audio_rate_window_s", "idle_timeout_s",
                     "max_buffered_ms", "drain_timeout_s", "max_connections_per_address"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_load", "min_audio_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_streams is not None and self.max_streams <= 0:
            raise ValueError(f"max_streams must be positive, got {self.max_streams}")
        if self.max_connection_buffer_bytes < 2 * (self.max_message_bytes + 1):
            raise ValueError(f"max_connection_buffer_bytes ({self.max_connection_buffer_bytes}) must hold two frames "
                             f"over max_message_bytes ({self.max_message_bytes}): at least "
                             f"{2 * (self.max_message_bytes + 1)}")

    # The WebSocket layer buffers up to queue_frames whole frames plus the one it is reading, each at most
    # hard_message_bytes: their product is the per-connection bound. A frame over max_message_bytes but under
    # hard_message_bytes is read and answered with an error frame; a larger one closes the connection (1009).
    @property
    def hard_message_bytes(self) -> int:
        return min(4 * self.max_message_bytes, self.max_connection_buffer_bytes // 2)

    @property
    def queue_frames(self) -> int:
        return max(1, self.max_connection_buffer_bytes // self.hard_message_bytes - 1)
