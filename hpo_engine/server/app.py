"""`hpo-engine serve`: WebSocket streaming (docs/DESIGN.md "Streaming protocol") and HTTP endpoints.

An asyncio loop does all I/O (websockets' server; plain HTTP routes through process_request); the
engine runs in its own thread (worker.py). Per connection: a reader (validates frames, applies
limits and backpressure, hands PCM to the worker) and a writer (sends what the worker posts).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from hpo_engine.speech.audio import SAMPLE_RATE

from .config import ServerConfig
from .metrics import ServerMetrics
from .page import page_html
from .session import END, Session
from .worker import EngineWorker

log = logging.getLogger("hpo_engine.server")
STREAM_PATH = "/v1/stream"


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    data = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                       ("Cache-Control", "no-store")])
    return Response(status, HTTPStatus(status).phrase, headers, data)


class TranslationServer:
    def __init__(self, model, config: ServerConfig):
        self.model, self.config = model, config
        self.metrics = ServerMetrics()
        self.worker = EngineWorker(model, self.metrics, config.max_new_tokens)
        self.sessions: set[Session] = set()
        self.draining = False
        self.server = None

    # -- HTTP -----------------------------------------------------------------------------------------
    def metrics_text(self) -> str:
        pool = self.model.engine.pool
        return self.metrics.render(blocks_used=pool.num_used, blocks_total=pool.num_blocks,
                                   active_streams=len(self.sessions))

    def authorized(self, headers) -> bool:
        if self.config.token is None:
            return True
        given = headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.config.token}".encode())

    def process_request(self, connection, request):
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _http(503 if self.draining else 200, "draining\n" if self.draining else "ok\n")
        if path == "/metrics":
            return _http(200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        if path in ("/", "/index.html"):
            return _http(200, page_html(self.model.config), "text/html; charset=utf-8")
        if path != STREAM_PATH:
            return _http(404, f"no such path: {path}\n")
        if not self.authorized(request.headers):
            return _http(401, "missing or wrong bearer token (send Authorization: Bearer TOKEN)\n")
        if self.draining:
            return _http(503, "server is shutting down\n")
        return None     # go on with the WebSocket upgrade

    # -- WebSocket ------------------------------------------------------------------------------------
    async def handle(self, ws) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        target_lang = query.get("target_lang", [self.model.config.default_target_lang])[0]
        cfg = self.model.config
        if target_lang not in cfg.instructions:
            await self._refuse(ws, "bad_target_lang", f"target_lang {target_lang!r} is not supported "
                               f"(supported: {', '.join(sorted(cfg.instructions))})")
            return
        if len(self.sessions) >= self.config.max_streams:
            self.metrics.streams_refused += 1
            await self._refuse(ws, "server_full", f"{self.config.max_streams} streams are open; try again later")
            return
        s = Session(target_lang, asyncio.get_running_loop(),
                    int(self.config.max_buffered_ms * SAMPLE_RATE / 1000))
        self.sessions.add(s)
        self.metrics.streams_total += 1
        self.worker.add(s)
        s.post({"type": "ready", "session": s.id, "target_lang": target_lang, "sample_rate": SAMPLE_RATE,
                "chunk_ms": cfg.chunk_ms, "trained": cfg.trained,
                "model": cfg.description or ("trained" if cfg.trained else "UNTRAINED model")})
        writer = asyncio.create_task(self._write(ws, s))
        try:
            await self._read(ws, s)
            await writer                     # until done is sent and the connection closed
        except ConnectionClosed:
            pass
        finally:
            if not s.finished:
                s.end_reason = s.end_reason or "disconnect"
                self.worker.cancel(s)        # the worker frees its blocks
            writer.cancel()
            self.sessions.discard(s)

    async def _refuse(self, ws, code: str, message: str) -> None:
        self.metrics.count_error(code)
        await ws.send(json.dumps({"type": "error", "code": code, "message": message}))
        await ws.close(1008, code)

    async def _write(self, ws, s: Session) -> None:
        while True:
            frame = await s.outbox.get()
            if frame is None:
                await ws.close(1000, s.end_reason or "done")
                return
            await ws.send(json.dumps(frame, ensure_ascii=False))

    def _error(self, s: Session, code: str, message: str) -> None:
        s.errors += 1
        self.metrics.count_error(code)
        s.post({"type": "error", "code": code, "message": message})

    def end_stream(self, s: Session, reason: str) -> None:
        if not s.ended:
            s.ended, s.end_reason = True, reason
            self.worker.submit(s, END)

    async def _read(self, ws, s: Session) -> None:
        """Read frames until the stream ends (end frame, a limit, idle, shutdown)."""
        cfg = self.config
        max_samples = int(cfg.max_duration_s * SAMPLE_RATE)
        while not s.ended:
            try:
                message = await asyncio.wait_for(ws.recv(), cfg.idle_timeout_s)
            except asyncio.TimeoutError:
                self._error(s, "idle_timeout", f"no frame for {cfg.idle_timeout_s:g} s; finishing the stream")
                self.end_stream(s, "idle_timeout")
                break
            if s.ended:           # shutdown began while we waited
                break
            size = len(message.encode()) if isinstance(message, str) else len(message)
            if size > cfg.max_message_bytes:
                self._error(s, "message_too_large",
                            f"frame of {size} bytes exceeds {cfg.max_message_bytes}; it was dropped")
                continue
            if isinstance(message, str):
                self._text_frame(s, message)
                continue
            if len(message) % 2:
                self._error(s, "bad_pcm", f"binary frame of {len(message)} bytes: PCM s16le needs an even "
                            "count; it was dropped")
                continue
            samples = len(message) // 2
            if s.accepted_samples + samples > max_samples:
                keep = max_samples - s.accepted_samples
                message = message[:2 * keep]
                self._error(s, "duration_limit", f"streams are limited to {cfg.max_duration_s:g} s of audio; "
                            "finishing the stream")
                samples = keep
            if samples:
                if s.buffered_samples >= s.max_buffered_samples:
                    self.metrics.backpressure_waits += 1
                    await s.wait_for_space()    # backpressure: stop reading while the engine is behind
                s.accepted_samples += samples
                self.metrics.buffered_seconds_peak = max(self.metrics.buffered_seconds_peak,
                                                         s.buffered_samples / SAMPLE_RATE)
                self.metrics.audio_seconds_total += samples / SAMPLE_RATE
                self.worker.submit(s, bytes(message))
            if s.accepted_samples >= max_samples:
                self.end_stream(s, "duration_limit")

    def _text_frame(self, s: Session, message: str) -> None:
        try:
            frame = json.loads(message)
        except json.JSONDecodeError as e:
            self._error(s, "bad_json", f"text frame is not JSON ({e.msg}); expected {{\"type\":\"end\"}}")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "end":
            self.end_stream(s, "end")
        elif kind is None:
            self._error(s, "bad_message", "text frames must be JSON objects with a \"type\"")
        else:
            self._error(s, "unknown_type", f"unknown message type {kind!r}; the only one is \"end\"")

    # -- lifecycle ------------------------------------------------------------------------------------
    async def run(self, ready_callback=None) -> None:
        """Serve until SIGTERM / SIGINT, then drain: open streams finish as if they had sent end."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.worker.start()
        async with serve(self.handle, self.config.host, self.config.port, process_request=self.process_request,
                         max_size=self.config.hard_message_bytes, max_queue=4,
                         # no keepalive pings: backpressure stops reading the socket, so a pong could not be
                         # seen and a slow engine would drop healthy clients; idle_timeout_s finds dead ones
                         ping_interval=None) as server:
            self.server = server
            port = server.sockets[0].getsockname()[1]
            log.info("serving on ws://%s:%d%s (model: %s)", self.config.host, port, STREAM_PATH,
                     self.model.config.description or self.model.path)
            if ready_callback:
                ready_callback(port)
            await stop.wait()
            await self.drain()
            server.close(close_connections=True)
        self.worker.stop()
        self.worker.join(timeout=10)

    async def drain(self) -> None:
        self.draining = True
        log.info("shutting down: draining %d stream(s)", len(self.sessions))
        for s in list(self.sessions):
            self.end_stream(s, "shutdown")
        deadline = asyncio.get_running_loop().time() + self.config.drain_timeout_s
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self.sessions:
            log.warning("drain timeout: %d stream(s) cut", len(self.sessions))
