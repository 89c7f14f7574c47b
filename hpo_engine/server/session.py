"""One client stream as both threads see it.

The event loop owns `outbox`, `accepted_samples`, `translated_samples` and `space`; the engine thread
owns `sst`. `inbox` crosses between them under the worker's lock (see worker.py).
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

END = object()       # inbox marker: no more audio


@dataclass(eq=False)   # identity: sessions live in sets
class Session:
    target_lang: str
    loop: asyncio.AbstractEventLoop
    max_buffered_samples: int
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)   # frames to send; None = close
    inbox: deque = field(default_factory=deque)     # (arrival time, PCM bytes or END), worker lock
    space: asyncio.Event = field(default_factory=asyncio.Event)
    accepted_samples: int = 0
    translated_samples: int = 0
    ended: bool = False          # END queued (client end, limit, idle or shutdown)
    cancelled: bool = False      # the client vanished: drop everything
    finished: bool = False       # done sent (or cancelled and freed)
    end_reason: str = ""
    started: float = field(default_factory=time.monotonic)
    sst: object = None           # SSTStream, engine thread only
    processing_ms: list = field(default_factory=list)
    errors: int = 0
    held_s: float = 0.0          # time the reader waited for the engine (backpressure): not the client's
    rate_marks: deque = field(default_factory=lambda: deque([(0.0, 0)]))   # (client time, accepted samples)
    realtime: bool = False       # vLLM's realtime protocol (realtime.py) rather than /v1/stream's
    started_engine: bool = False  # handed to the engine thread (its SST stream opens in target_lang)

    def __post_init__(self):
        self.space.set()

    # -- event loop side ----------------------------------------------------------------------
    @property
    def buffered_samples(self) -> int:
        return self.accepted_samples - self.translated_samples

    def on_translated(self, samples: int) -> None:
        self.translated_samples = max(self.translated_samples, samples)
        if self.buffered_samples < self.max_buffered_samples:
            self.space.set()

    async def wait_for_space(self) -> None:
        """Backpressure: hold the reader while too much audio waits for translation."""
        while self.buffered_samples >= self.max_buffered_samples and not self.finished:
            self.space.clear()
            await self.space.wait()

    def audio_rate(self, now: float, window_s: float, sample_rate: int) -> float | None:
        """Audio seconds received per second of the client's time (wall time less held_s) over the last
        `window_s`; None until a whole window has passed. Call on every frame."""
        t = now - self.started - self.held_s
        self.rate_marks.append((t, self.accepted_samples))
        while len(self.rate_marks) > 1 and self.rate_marks[1][0] <= t - window_s:
            self.rate_marks.popleft()           # keep one mark at or before the window's start
        t0, n0 = self.rate_marks[0]
        if t - t0 < window_s:
            return None
        return (self.accepted_samples - n0) / sample_rate / (t - t0)

    def post(self, frame: dict | None) -> None:
        """From any thread: queue a frame for the client (None closes the connection)."""
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, frame)
