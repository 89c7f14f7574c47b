"""`hpo-engine serve`: WebSocket streaming (docs/DESIGN.md "Streaming protocol"), vLLM's realtime
protocol at /v1/realtime (realtime.py) and HTTP endpoints.

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
import time
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from hpo_engine.speech.audio import SAMPLE_RATE

from . import realtime
from .admission import Admission, calibrate
from .config import ServerConfig
from .metrics import ServerMetrics
from .page import page_html
from .session import END, Session
from .worker import EngineWorker

log = logging.getLogger("hpo_engine.server")
STREAM_PATH = "/v1/stream"
MAX_TEXT_BYTES = 4096       # the protocol's text frames are {"type":"end"}: no reason to parse more
MAX_JSON_DEPTH = 32         # json.loads recurses per nesting level: 200 KB of "[" raised RecursionError
RETRY_AFTER_S = 5           # a few chunks: streams end and the load estimate moves on that scale


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8",
          retry_after: int | None = None) -> Response:
    data = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                       ("Cache-Control", "no-store")])
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(status, HTTPStatus(status).phrase, headers, data)


def json_depth(text: str, limit: int) -> int:
    """Nesting depth of the JSON `text` (brackets outside strings), counted up to `limit` + 1."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def _client_address(connection) -> str:
    address = connection.remote_address
    return address[0] if address else "unknown"


class TranslationServer:
    def __init__(self, model, config: ServerConfig):
        self.model, self.config = model, config
        self.metrics = ServerMetrics()
        self.admission = Admission(model.config.chunk_ms / 1000, config.max_load)
        self.max_streams = config.max_streams       # None until measured (run)
        self.worker = EngineWorker(model, self.metrics, config.max_new_tokens, self.admission)
        self.sessions: set[Session] = set()
        self.connections: Counter = Counter()       # open WebSocket connections per client address
        self.draining = False
        self.server = None
        self.model_id = Path(str(model.path)).name      # the name realtime clients give in session.update

    # -- HTTP -----------------------------------------------------------------------------------------
    def metrics_text(self) -> str:
        pool = self.model.engine.pool
        return self.metrics.render(blocks_used=pool.num_used, blocks_total=pool.num_blocks,
                                   active_streams=len(self.sessions), max_streams=self.max_streams or 0,
                                   capacity=self.admission.capacity(), chunk_compute_s=self.admission.cost_s)

    def authorized(self, headers) -> bool:
        if self.config.token is None:
            return True
        given = headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.config.token}".encode())

    def origin_allowed(self, headers) -> bool:
        """Cross-site WebSocket hijacking: a browser lets any page open ws:// to a local server and sends the
        page's Origin. Allowed: clients that send none (not browsers), the server's own page (Origin's
        host:port is the Host asked for) and --allow-origin values."""
        origin = headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        parts = urlsplit(origin)
        own = parts.scheme in ("http", "https") and parts.netloc == headers.get("Host", "").lower()
        return own or "*" in self.config.allow_origins or origin in self.config.allow_origins

    def refusal(self, address: str, others: int) -> tuple[int, str, str] | None:
        """Why a new stream from `address` (which holds `others` other connections) is refused, as
        (HTTP status, error code, message), or None. Asked before the upgrade and again after it."""
        limit = self.config.max_connections_per_address
        if others >= limit:
            return 429, "too_many_connections", f"{others} connections from {address} are open (at most {limit})"
        if len(self.sessions) >= self.max_streams:
            return 503, "server_full", f"{self.max_streams} streams are open; try again later"
        if not self.admission.admits(len(self.sessions)):
            return 503, "server_busy", (f"the server cannot take one more stream and keep up with the "
                                        f"{len(self.sessions)} it translates in real time; try again later")
        return None

    def process_request(self, connection, request):
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _http(503 if self.draining else 200, "draining\n" if self.draining else "ok\n")
        if path == "/metrics":
            return _http(200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        if path in ("/", "/index.html"):
            return _http(200, page_html(self.model.config), "text/html; charset=utf-8")
        if path not in (STREAM_PATH, realtime.PATH):
            return _http(404, f"no such path: {path}\n")
        if not self.authorized(request.headers):
            return _http(401, "missing or wrong bearer token (send Authorization: Bearer TOKEN)\n")
        if not self.origin_allowed(request.headers):
            self.metrics.count_error("origin_not_allowed")
            return _http(403, f"origin {request.headers.get('Origin')} is not allowed (the server's own page is; "
                         "start it with --allow-origin ORIGIN for others)\n")
        if self.draining:
            return _http(503, "server is shutting down\n")
        address = _client_address(connection)
        refused = self.refusal(address, self.connections[address])
        if refused:
            status, code, message = refused
            self.metrics.streams_refused += 1
            self.metrics.count_error(code)
            return _http(status, f"{code}: {message}\n", retry_after=RETRY_AFTER_S)
        return None     # go on with the WebSocket upgrade

    # -- WebSocket ------------------------------------------------------------------------------------
    async def handle(self, ws) -> None:
        address = _client_address(ws)
        self.connections[address] += 1
        try:
            await self._serve(ws, address)
        finally:
            self.connections[address] -= 1
            if not self.connections[address]:
                del self.connections[address]

    async def _serve(self, ws, address: str) -> None:
        url = urlsplit(ws.request.path)
        query = parse_qs(url.query)
        target_lang = query.get("target_lang", [self.model.config.default_target_lang])[0]
        cfg = self.model.config
        if target_lang not in cfg.instructions:
            await self._refuse(ws, "bad_target_lang", f"target_lang {target_lang!r} is not supported "
                               f"(supported: {', '.join(sorted(cfg.instructions))})")
            return
        refused = self.refusal(address, self.connections[address] - 1)   # others opened since process_request
        if refused:
            self.metrics.streams_refused += 1
            await self._refuse(ws, *refused[1:])
            return
        s = Session(target_lang, asyncio.get_running_loop(),
                    int(self.config.max_buffered_ms * SAMPLE_RATE / 1000), realtime=url.path == realtime.PATH)
        self.sessions.add(s)
        self.metrics.streams_total += 1
        if not s.realtime:          # a realtime session may still change its language: it starts with its audio
            self._start(s)
        s.post({"type": "ready", "session": s.id, "target_lang": target_lang, "sample_rate": SAMPLE_RATE,
                "model_id": self.model_id,
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

    def _start(self, s: Session) -> None:
        """Hand the session to the engine thread (it opens the SST stream in s.target_lang)."""
        if not s.started_engine:
            s.started_engine = True
            self.worker.add(s)

    async def _write(self, ws, s: Session) -> None:
        while True:
            frame = await s.outbox.get()
            if frame is None:
                await ws.close(1000, s.end_reason or "done")
                return
            if s.realtime:
                frame = realtime.server_event(frame)
                if frame is None:
                    continue
            await ws.send(json.dumps(frame, ensure_ascii=False))

    def _error(self, s: Session, code: str, message: str) -> None:
        s.errors += 1
        self.metrics.count_error(code)
        s.post({"type": "error", "code": code, "message": message})

    def end_stream(self, s: Session, reason: str) -> None:
        if not s.ended:
            s.ended, s.end_reason = True, reason
            self._start(s)          # a realtime session that sent no audio still gets its done
            self.worker.submit(s, END)

    async def _read(self, ws, s: Session) -> None:
        """Read frames until the stream ends (end frame, a limit, idle, shutdown)."""
        cfg = self.config
        max_samples = int(cfg.max_duration_s * SAMPLE_RATE)
        deadline = s.started + cfg.max_stream_s
        while not s.ended:
            try:
                message = await asyncio.wait_for(ws.recv(), max(0.0, min(cfg.idle_timeout_s,
                                                                          deadline - time.monotonic())))
            except asyncio.TimeoutError:
                if not self._over_time(s):
                    self._finish(s, "idle_timeout", f"no frame for {cfg.idle_timeout_s:g} s; finishing the stream")
                break
            if s.ended:           # shutdown began while we waited
                break
            size = len(message.encode()) if isinstance(message, str) else len(message)
            if size > cfg.max_message_bytes:
                self._error(s, "message_too_large",
                            f"frame of {size} bytes exceeds {cfg.max_message_bytes}; it was dropped")
            elif s.realtime:
                await self._realtime_frame(s, message, max_samples)
            elif isinstance(message, str):
                self._text_frame(s, message)
            elif len(message) % 2:
                self._error(s, "bad_pcm", f"binary frame of {len(message)} bytes: PCM s16le needs an even "
                            "count; it was dropped")
            else:
                await self._audio_frame(s, message, max_samples)
            if not s.ended:
                self._check_pace(s)

    async def _audio_frame(self, s: Session, message: bytes, max_samples: int) -> None:
        cfg = self.config
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
                held = time.monotonic()
                await s.wait_for_space()    # backpressure: stop reading while the engine is behind
                s.held_s += time.monotonic() - held
            s.accepted_samples += samples
            self.metrics.buffered_seconds_peak = max(self.metrics.buffered_seconds_peak,
                                                     s.buffered_samples / SAMPLE_RATE)
            self.metrics.audio_seconds_total += samples / SAMPLE_RATE
            self.worker.submit(s, bytes(message))
        if s.accepted_samples >= max_samples:
            self.end_stream(s, "duration_limit")

    async def _realtime_frame(self, s: Session, message, max_samples: int) -> None:
        """One event of vLLM's realtime protocol (realtime.py); a bad one gets an error event and the
        session goes on, as a bad frame does on /v1/stream."""
        if isinstance(message, bytes):
            self._error(s, "invalid_event", "binary frames are not part of the realtime protocol: send audio "
                        "as input_audio_buffer.append events (base64 PCM16); it was dropped")
            return
        if json_depth(message, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            self._error(s, "invalid_json", f"event nests deeper than {MAX_JSON_DEPTH} levels; it was dropped")
            return
        try:
            event = realtime.parse_event(message)
            if event["type"] == realtime.UPDATE:
                self._session_update(s, event)
            elif event["type"] == realtime.APPEND:
                pcm = realtime.decode_audio(event)
                self._start(s)
                await self._audio_frame(s, pcm, max_samples)
            elif realtime.is_final(event):
                if not s.accepted_samples:
                    raise realtime.ProtocolError("input_audio_buffer_commit_empty", "final commit with no audio "
                                                 "appended: append input_audio_buffer.append events first")
                self.end_stream(s, "end")
        except realtime.ProtocolError as e:
            self._error(s, e.code, e.message)

    def _session_update(self, s: Session, event: dict) -> None:
        cfg, model = self.model.config, event.get("model")
        if model not in (None, "", self.model_id, str(self.model.path)):
            raise realtime.ProtocolError("model_not_found", f"this server serves {self.model_id!r}, not {model!r}")
        lang = event.get("target_lang")
        if lang is None or lang == s.target_lang:
            return
        if lang not in cfg.instructions:
            raise realtime.ProtocolError("bad_target_lang", f"target_lang {lang!r} is not supported (supported: "
                                         f"{', '.join(sorted(cfg.instructions))})")
        if s.started_engine:
            raise realtime.ProtocolError("session_started", "target_lang can only change before the first audio")
        s.target_lang = lang

    def _check_pace(self, s: Session) -> None:
        """A slot is not held by a stream that sends much slower than real time (any frame resets the idle
        timer, so one sample every few seconds would hold it forever) or for longer than max_stream_s."""
        cfg = self.config
        if self._over_time(s):
            return
        rate = s.audio_rate(time.monotonic(), cfg.audio_rate_window_s, SAMPLE_RATE)
        if rate is not None and rate < cfg.min_audio_rate:
            self._finish(s, "audio_too_slow", f"{rate:.2f} s of audio per second over the last "
                         f"{cfg.audio_rate_window_s:g} s (at least {cfg.min_audio_rate:g} needed: send audio as "
                         "it is spoken); finishing the stream")

    def _over_time(self, s: Session) -> bool:
        """Finish the stream if it has had its max_stream_s of wall time."""
        if time.monotonic() < s.started + self.config.max_stream_s:
            return False
        self._finish(s, "stream_time_limit", f"streams are limited to {self.config.max_stream_s:g} s of wall "
                     "time; finishing the stream")
        return True

    def _finish(self, s: Session, code: str, message: str) -> None:
        """An error frame, then the stream ends as if the client had sent end: what it sent is translated."""
        self._error(s, code, message)
        self.end_stream(s, code)

    def _text_frame(self, s: Session, message: str) -> None:
        size = len(message.encode())
        if size > MAX_TEXT_BYTES:
            self._error(s, "message_too_large", f"text frame of {size} bytes exceeds {MAX_TEXT_BYTES}; "
                        "expected {\"type\":\"end\"}")
            return
        if json_depth(message, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            self._error(s, "bad_json", f"text frame nests deeper than {MAX_JSON_DEPTH} levels; expected "
                        "{\"type\":\"end\"}")
            return
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError) as e:
            self._error(s, "bad_json", f"text frame is not JSON ({getattr(e, 'msg', e)}); "
                        "expected {\"type\":\"end\"}")
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
        self.calibrate()
        self.worker.start()
        async with serve(self.handle, self.config.host, self.config.port, process_request=self.process_request,
                         max_size=self.config.hard_message_bytes, max_queue=self.config.queue_frames,
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

    def calibrate(self) -> None:
        """Measure one stream's compute per chunk (the engine is still ours: the worker has not started);
        without --max-streams, admit what that sustains (at --max-load, or at full load when it is 0)."""
        cfg, chunk_ms = self.config, self.model.config.chunk_ms
        cost = self.admission.cost_s = calibrate(self.model, cfg.max_new_tokens)
        if self.max_streams is None:
            self.max_streams = Admission(chunk_ms / 1000, cfg.max_load or 1.0, cost).capacity() or 1
        log.info("capacity: %d stream(s) at most (%s); %s", self.max_streams,
                 "--max-streams" if cfg.max_streams else "measured",
                 f"{cost * 1000:.0f} ms of compute per {chunk_ms} ms chunk" if cost else "no turn fits the cache")
        if cost and cost > chunk_ms / 1000:
            log.warning("one stream alone needs %.1fx real time here: its lag will grow (fewer --max-new-tokens, "
                        "more --threads or a faster machine)", cost / (chunk_ms / 1000))

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
