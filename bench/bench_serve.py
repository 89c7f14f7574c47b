"""How many concurrent real-time streams `hpo-engine serve` sustains, and one stream's computation overhead.

Run:    .venv/bin/python bench/bench_serve.py [--streams 1,2,4,8,16] [--max-new-tokens N] [--threads T]
            [--quantize int8|w8a8] [--json out.json]
        .venv/bin/python bench/bench_serve.py --at-capacity [--threads T]    (admission, below)

Setup: the embedded default model (since 2026-12-03 Whisper tiny.en as transcriber + Qwen2.5-0.5B with
its LoRA; the figures before that date are the SmolLM2 projector models'), a real `hpo-engine serve` subprocess, and N WebSocket clients in this
process, each streaming the real read speech of tests/data/speech (5.3 s, three times: 15.9 s) in
160 ms frames paced by the wall clock, start times staggered over one chunk.
Per chunk, client side: latency = arrival of its translation frame - the moment its last sample was
sent. N streams are SUSTAINED when the p95 of that latency over all chunks of all streams stays below
the chunk duration (1.12 s): the server keeps up with real time. Beside it, the engine thread's compute
per chunk (hpo_engine_busy_seconds_total / hpo_chunks_total over the level) against the simulation's: a
latency above the compute is queueing, which grows without bound once compute per chunk exceeds the
chunk's duration divided by the streams.

--at-capacity: the server as it starts by default (capacity measured at start, --max-load 0.8); as many
clients as it admits stream at once, then one more connects: it must be refused (HTTP 503), and the
admitted streams' lag must stay below 2 chunks at p95.

Single stream: `hpo-engine translate`'s simulation of the same audio, scored by hpo_engine.metrics;
the whole recording is one segment, so StreamLAAL = LAAL and the computation-aware overhead
StreamLAAL_CA - StreamLAAL = LAAL_CA - LAAL.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech" / "librivox_0890.flac"
REPEAT = 3
# a German rendering of the clip's transcript ("unless to be rather cold hearted ..."), only its length matters
REFERENCE = "es sei denn, eher kaltherzig und eher selbstsüchtig zu sein heißt, übel gesinnt zu sein"
FRAME_MS = 160


def speech_pcm() -> bytes:
    from hpo_engine.speech.audio import float_to_pcm16, load_audio
    return float_to_pcm16(np.tile(load_audio(SPEECH), REPEAT))


def start_server(tmp: Path, max_new_tokens: int | None, admission: bool = False,
                 quantize: str | None = None) -> tuple[subprocess.Popen, int]:
    """A `serve` subprocess. Without `admission` it takes every stream (to find where it falls behind);
    with it, its defaults decide (capacity measured at start, --max-load 0.8). All clients here share
    one address: the per-address connection limit is lifted either way."""
    log = tmp / "server.log"
    args = [sys.executable, "-c", "from hpo_engine.server.cli import serve; serve()", "--port", "0",
            "--max-connections-per-address", "256", "--idle-timeout-s", "120"]
    if not admission:
        args += ["--max-streams", "256", "--max-load", "0"]
    if max_new_tokens:
        args += ["--max-new-tokens", str(max_new_tokens)]
    if quantize:
        args += ["--quantize", quantize]
    proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while True:
        m = re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", log.read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.2)


async def client(port: int, pcm: bytes, delay: float) -> tuple[list[float], list[float]]:
    """Stream `pcm` in real time; (client latencies, server processing ms) per chunk."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    frame = FRAME_MS * 32
    sent_at: list[tuple[float, float]] = []       # (audio ms sent so far, wall time)
    latencies, processing = [], []
    async with connect(f"ws://127.0.0.1:{port}/v1/stream?target_lang=de", max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"

        async def receive():
            async for message in ws:
                f = json.loads(message)
                if f["type"] == "translation":
                    done = next(t for ms, t in sent_at if ms >= f["audio_ms"] - 1e-6)
                    latencies.append((time.perf_counter() - done) * 1000)
                    processing.append(f["processing_ms"])
                elif f["type"] == "error":
                    raise RuntimeError(f)
        reader = asyncio.create_task(receive())
        t0 = time.perf_counter()
        for i in range(0, len(pcm), frame):
            await asyncio.sleep(max(0.0, t0 + (i // frame) * FRAME_MS / 1000 - time.perf_counter()))
            await ws.send(pcm[i:i + frame])
            sent_at.append(((i + len(pcm[i:i + frame])) / 32, time.perf_counter()))
        await ws.send(json.dumps({"type": "end"}))
        await reader
    return latencies, processing


async def run_level(port: int, pcm: bytes, n: int, chunk_ms: float) -> dict:
    rng = random.Random(n)
    busy0, chunks0 = metric(port, "hpo_engine_busy_seconds_total"), metric(port, "hpo_chunks_total")
    results = await asyncio.gather(*(client(port, pcm, rng.uniform(0, chunk_ms / 1000)) for _ in range(n)),
                                   return_exceptions=True)
    chunks = metric(port, "hpo_chunks_total") - chunks0
    # the engine thread's compute per chunk; a chunk's latency beyond it is queueing behind other turns
    compute_ms = (metric(port, "hpo_engine_busy_seconds_total") - busy0) * 1000 / max(chunks, 1)
    failed = [repr(r) for r in results if isinstance(r, BaseException)]
    if failed:
        return {"streams": n, "sustained": False, "failed_clients": failed}
    lat = np.concatenate([r[0] for r in results])
    proc = np.concatenate([r[1] for r in results])
    return {"streams": n, "chunks": int(len(lat)), "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)), "server_processing_p95_ms": float(np.percentile(proc, 95)),
            "server_compute_per_chunk_ms": compute_ms,
            "sustained": bool(np.percentile(lat, 95) < chunk_ms)}


def metric(port: int, name: str) -> float:
    from urllib.request import urlopen
    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


async def refused(port: int) -> dict:
    """Open one more stream: how the server answers (a refusal before the upgrade, or a first frame)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus
    try:
        async with connect(f"ws://127.0.0.1:{port}/v1/stream?target_lang=de") as ws:
            return {"refused": False, "first_frame": json.loads(await ws.recv())}
    except InvalidStatus as e:
        return {"refused": True, "status": e.response.status_code, "body": e.response.body.decode().strip()}


async def at_capacity(port: int, pcm: bytes, chunk_ms: float) -> dict:
    """Admission at the measured capacity: as many clients as the server admits (hpo_max_streams) stream
    at once; when all are in, one more connects and must be refused; the admitted streams' lag (client
    latency per chunk) must stay below 2 chunks at p95."""
    n = int(metric(port, "hpo_max_streams"))
    rng = random.Random(n)
    clients = [asyncio.create_task(client(port, pcm, rng.uniform(0, chunk_ms / 1000))) for _ in range(n)]
    while metric(port, "hpo_active_streams") < n and not any(c.done() for c in clients):
        await asyncio.sleep(0.1)
    extra = await refused(port)
    results = await asyncio.gather(*clients, return_exceptions=True)
    failed = [repr(r) for r in results if isinstance(r, BaseException)]
    out = {"capacity": n, "chunk_compute_s": metric(port, "hpo_chunk_compute_seconds"), "extra_stream": extra,
           "failed_clients": failed}
    if not failed:
        lag = np.concatenate([r[0] for r in results]) / chunk_ms
        out.update(chunks=int(len(lag)), lag_p50_chunks=float(np.percentile(lag, 50)),
                   lag_p95_chunks=float(np.percentile(lag, 95)))
    out["passed"] = bool(not failed and extra["refused"] and out.get("lag_p95_chunks", float("inf")) < 2)
    return out


def single_stream_overhead(max_new_tokens: int | None, tmp: Path, quantize: str | None = None) -> dict:
    from hpo_engine.metrics.scoring import score_shortform
    from hpo_engine.speech.audio import load_audio
    from hpo_engine.sst import open_sst
    from hpo_engine.sst.simulate import simulate

    model = open_sst(quantize=quantize)
    inst = simulate(model, np.tile(load_audio(SPEECH), REPEAT), "de", max_new_tokens)
    log = tmp / "instances.log"
    log.write_text(json.dumps(inst.to_log(0, reference=" ".join([REFERENCE] * REPEAT))) + "\n")
    s = score_shortform(str(log), quality=())
    return {"LAAL": s["LAAL"], "LAAL_CA": s["LAAL_CA"], "overhead_ms": s["LAAL_CA"] - s["LAAL"],
            "chunk_processing_p95_ms": float(np.percentile(inst.chunk_processing_ms, 95)),
            "compute_per_chunk_ms": float(np.mean(inst.chunk_processing_ms))}


def main() -> None:
    from hpo_engine.models.quantize import QUANTIZE_CHOICES
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", default="1,2,4,8,16", help="stream counts to try, ascending")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="per turn (default: the checkpoint's)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--at-capacity", action="store_true",
                    help="instead: the server's own admission (defaults); capacity streams + one more")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (server: OMP_NUM_THREADS); on a shared loaded machine 1 suffers less")
    ap.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                    help="int8 LLM projections in the server and the simulation (serve --quantize)")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)     # inherited by the server process
        import torch
        torch.set_num_threads(args.threads)
    from hpo_engine.sst.default_model import default_sst_path
    from hpo_engine.sst.config import SSTConfig
    chunk_ms = SSTConfig.load(default_sst_path()).chunk_ms
    pcm = speech_pcm()
    out = {"audio_s": len(pcm) / 32000, "chunk_ms": chunk_ms, "max_new_tokens": args.max_new_tokens,
           "threads": args.threads, "quantize": args.quantize,
           "date": time.strftime("%Y-%m-%d"), "load_average": os.getloadavg(), "levels": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.at_capacity:
            proc, port = start_server(tmp, args.max_new_tokens, admission=True, quantize=args.quantize)
            try:
                out["at_capacity"] = asyncio.run(at_capacity(port, pcm, chunk_ms))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            print(json.dumps(out["at_capacity"]), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1))
            return
        if not args.skip_single:
            out["single_stream"] = single_stream_overhead(args.max_new_tokens, tmp, args.quantize)
            print(json.dumps(out["single_stream"]), flush=True)
        proc, port = start_server(tmp, args.max_new_tokens, quantize=args.quantize)
        try:
            for n in (int(x) for x in args.streams.split(",")):
                level = asyncio.run(run_level(port, pcm, n, chunk_ms))
                out["levels"].append(level)
                print(json.dumps(level), flush=True)
                if not level["sustained"]:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    ok = [lv["streams"] for lv in out["levels"] if lv["sustained"]]
    out["max_sustained_streams"] = max(ok) if ok else 0
    out["load_average_after"] = os.getloadavg()
    print(json.dumps({"max_sustained_streams": out["max_sustained_streams"]}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
