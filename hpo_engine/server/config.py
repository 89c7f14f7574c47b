"""Server settings (`hpo-engine serve` options)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None              # bearer token; None = open
    max_streams: int = 64                 # concurrent streams; more are refused with an error frame
    max_message_bytes: int = 1 << 20      # larger frames get an error frame (the stream goes on)
    hard_message_bytes: int = 8 << 20     # beyond this the WebSocket layer closes the connection (1009)
    max_duration_s: float = 3600.0        # audio per stream; then the stream is finished
    idle_timeout_s: float = 30.0          # no frame for this long: the stream is finished
    max_buffered_ms: float = 4000.0       # audio accepted but not yet translated; beyond it reading stops
    max_new_tokens: int | None = None     # per turn (default: the checkpoint's)
    drain_timeout_s: float = 60.0         # SIGTERM: time given to open streams to finish

    def __post_init__(self):
        for name in ("max_streams", "max_message_bytes", "max_duration_s", "idle_timeout_s", "max_buffered_ms",
                     "drain_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hard_message_bytes < self.max_message_bytes:
            raise ValueError("hard_message_bytes must be >= max_message_bytes")
