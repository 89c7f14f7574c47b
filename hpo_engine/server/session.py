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

    def post(self, frame: dict | None) -> None:
        """From any thread: queue a frame for the client (None closes the connection)."""
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, frame)
