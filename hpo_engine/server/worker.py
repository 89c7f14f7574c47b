"""The engine thread: encodes arriving audio and runs one batched turn for every stream with a chunk.

Only this thread touches the engine and the SST streams (the engine is not thread-safe). Each step:
  1. take every session's queued PCM / END (under the lock), drop vanished sessions (frees blocks)
  2. encode: feed PCM to each stream's front end (completed chunks wait in the stream)
  3. one engine step over all streams (step_streams): a stream with a ready chunk and no turn in
     flight starts its turn and joins the running batch at once
  4. post translation frames; finished streams get their done frame, are closed and logged
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from hpo_engine.runtime.scheduler import OutOfBlocks
from hpo_engine.speech.audio import SAMPLE_RATE
from hpo_engine.sst.stream import SSTStream, step_streams

from .metrics import ServerMetrics
from .session import END, Session

log = logging.getLogger("hpo_engine.server")


class EngineWorker(threading.Thread):
    def __init__(self, model, metrics: ServerMetrics, max_new_tokens: int | None = None, admission=None):
        super().__init__(name="hpo-engine-worker", daemon=True)
        self.model, self.metrics, self.max_new_tokens = model, metrics, max_new_tokens
        self.admission = admission      # told each step's compute and chunks (admission.py)
        self.lock = threading.Condition()
        self.sessions: list[Session] = []          # engine thread's view
        self._new: list[Session] = []
        self._stopping = False

    # -- called from the event loop -----------------------------------------------------------------
    def add(self, session: Session) -> None:
        with self.lock:
            self._new.append(session)
            self.lock.notify()

    def submit(self, session: Session, item) -> None:
        """PCM bytes or END for a session (same clock as SSTStream's default, perf_counter)."""
        with self.lock:
            session.inbox.append((time.perf_counter(), item))   # arrival time: queueing counts as latency
            self.lock.notify()

    def cancel(self, session: Session) -> None:
        with self.lock:
            session.cancelled = True
            self.lock.notify()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()

    # -- engine thread ----------------------------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._new) or any(s.inbox or s.cancelled or (s.sst is not None and (
            s.sst.ready or s.sst.in_flight is not None)) for s in self.sessions)

    def run(self) -> None:
        while True:
            with self.lock:
                while not self._stopping and not self._has_work():
                    self.lock.wait()
                if self._stopping:
                    break
                self.sessions += self._new
                self._new = []
                taken = {id(s): list(s.inbox) for s in self.sessions}
                for s in self.sessions:
                    s.inbox.clear()
            try:
                start = time.perf_counter()
                chunks = self._step(taken)
                busy = time.perf_counter() - start
                self.metrics.engine_busy_seconds += busy
                if self.admission is not None:
                    self.admission.record(busy, chunks)
            except OutOfBlocks as e:    # one stream alone outgrew the KV cache: it fails, the others go on
                culprits = [s for s in self.sessions if s.sst is not None and s.sst.stream.seq.seq_id == e.seq_id]
                for s in culprits or list(self.sessions):
                    self._fail(s, "out_of_memory", f"this stream no longer fits the server's KV cache ({e}); "
                               "the server needs a larger --cache-memory")
            except Exception:       # never let one bad step kill the server: fail its streams instead
                log.exception("engine step failed")
                for s in list(self.sessions):
                    self._fail(s, "internal_error", "the engine failed on this stream's batch")
        for s in list(self.sessions) + self._new:
            self._close(s, "shutdown")

    def _step(self, taken: dict) -> int:
        """One step; returns the chunks it finished translating."""
        for s in list(self.sessions):
            if s.cancelled:
                self._close(s, s.end_reason or "disconnect")
                continue
            if s.sst is None:
                s.sst = SSTStream(self.model, s.target_lang, self.max_new_tokens)
            for arrived_at, item in taken.get(id(s), []):
                try:
                    if item is END:
                        s.sst.end(arrived_at)
                    elif not s.sst.ended:
                        s.sst.feed(item, arrived_at)
                except ValueError as e:     # bad audio content: tell the client, keep the stream
                    s.errors += 1
                    self.metrics.count_error("bad_audio")
                    s.post({"type": "error", "code": "bad_audio", "message": str(e)})
        results = step_streams([s.sst for s in self.sessions if s.sst is not None and not s.cancelled])
        by_stream = {id(s.sst): s for s in self.sessions}
        for stream, delta in results:
            s = by_stream[id(stream)]
            s.processing_ms.append(delta.processing_ms)
            self.metrics.chunks_total += 1
            self.metrics.chunk_seconds_sum += delta.processing_ms / 1000
            self.metrics.observe_lag(delta.processing_ms / 1000)
            s.post({"type": "translation", "text": delta.text, "audio_ms": round(delta.audio_ms, 3),
                    "elapsed_ms": round(delta.elapsed_ms, 1), "processing_ms": round(delta.processing_ms, 1),
                    "turn": delta.turn})
            samples = int(round(delta.audio_ms * SAMPLE_RATE / 1000))
            s.loop.call_soon_threadsafe(s.on_translated, samples)
        for s in list(self.sessions):
            if s.sst is not None and s.sst.finished:
                stats = s.sst.stream.stats()
                s.post({"type": "done", "text": s.sst.text, "audio_ms": round(s.sst.audio_ms, 3),
                        "generated_tokens": stats["generated_tokens"],
                        "prompt_tokens": stats["cached_tokens"] + stats["evicted_tokens"] - stats["generated_tokens"]})
                self._close(s, s.end_reason or "end")
        return len(results)

    def _fail(self, s: Session, code: str, message: str) -> None:
        self.metrics.count_error(code)
        s.post({"type": "error", "code": code, "message": message})
        self._close(s, code)

    def _close(self, s: Session, reason: str) -> None:
        """Log one line, free the stream's blocks, close the connection (in this order, so that anyone
        who sees the blocks back or the connection closed also finds the line in the log)."""
        if s in self.sessions:
            self.sessions.remove(s)
        stats = s.sst.stats() if s.sst is not None else {}
        p = np.array(s.processing_ms) if s.processing_ms else np.zeros(1)
        log.info("stream %s lang=%s end=%s audio_ms=%.0f chunks=%d turns=%d tokens=%d chars=%d "
                 "chunk_ms_p50=%.0f chunk_ms_p95=%.0f errors=%d", s.id, s.target_lang, reason,
                 stats.get("audio_ms", 0), stats.get("chunks", 0), stats.get("turns", 0),
                 stats.get("generated_tokens", 0), len(s.sst.text) if s.sst else 0,
                 np.percentile(p, 50), np.percentile(p, 95), s.errors)
        if s.sst is not None:
            s.sst.close()
        s.finished = True
        s.post(None)
        s.loop.call_soon_threadsafe(s.space.set)
