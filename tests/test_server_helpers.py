"""A real `hpo-engine serve` subprocess for the server tests (no tests here)."""
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import connect

START_TIMEOUT_S = 300        # model load on a loaded 2-core machine
SERVE = "from hpo_engine.server.cli import serve; serve()"


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    token: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str) -> float:
        _, text = self.http("/metrics")
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        assert m, f"{name} missing from /metrics"
        return float(m.group(1))

    def wait_metric(self, name: str, value: float, timeout: float = 120) -> float:
        """Poll until the gauge reads `value` (a condition, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while (got := self.metric(name)) != value and time.monotonic() < deadline:
            time.sleep(0.2)
        return got

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_server(tmp: Path, *args: str, token: str | None = "test-token") -> ServerProcess:
    """`hpo-engine serve` on a free port; with `token`, clients need Authorization: Bearer token."""
    if token is not None:
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)             # serve refuses a token others can read
        args = ("--token-file", str(token_file), *args)
    log_path = tmp / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ("--threads", "1", *args)        # see test_sst_helpers.one_thread
    if "--model" not in args:               # the small projector checkpoint (test_sst_helpers.stream_model_path)
        from test_sst_helpers import stream_model_path
        args = ("--model", str(stream_model_path()), *args)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, "--port", "0", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        m = re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", log_path.read_text())
        if m:
            return ServerProcess(proc, int(m.group(1)), token, log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log_path.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start in {START_TIMEOUT_S} s:\n{log_path.read_text()}")


def auth(server: ServerProcess) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


async def stream_session(server: ServerProcess, pcm: bytes, frame_bytes: int = 3200, lang: str = "de",
                         extra=()) -> list[dict]:
    """Send PCM in frames (plus `extra` frames after the first one), then end; return every frame received."""
    async with connect(f"{server.url}?target_lang={lang}", additional_headers=auth(server)) as ws:
        frames = [json.loads(await ws.recv())]
        for i in range(0, len(pcm), frame_bytes):
            await ws.send(pcm[i:i + frame_bytes])
            if i == 0:
                for bad in extra:
                    await ws.send(bad)
        await ws.send(json.dumps({"type": "end"}))
        async for message in ws:
            frames.append(json.loads(message))
    return frames


def run(coro):
    return asyncio.run(coro)
