"""`hpo-engine serve` over a real socket: protocol, concurrency, bad frames, limits, disconnects, SIGTERM.

One server process (default model, 3 new tokens per turn) serves the module; the SIGTERM test stops a
server of its own, so the tests run in any order.
"""
import asyncio
import json
import random
import signal

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from test_server_helpers import auth, run, start_server, stream_session
from test_sst_helpers import SENTENCES, espeak_pcm16

pytestmark = pytest.mark.slow          # make test-fast leaves these out

CHUNK_MS = 1120
CLOSING_TURNS = 2       # SSTConfig's default, which the test model's sst_config.json leaves as it is
MAX_MESSAGE = 65536
MAX_BUFFERED_MS = 1120
IDLE_S = 6
FRAME = 8000            # the largest binary frame any test sends (0.25 s)
# 16 clients at once from one address, faster than real time: these tests are not about admission
# (test_hardening_server.py is)
NO_ADMISSION_LIMITS = ("--max-streams", "64", "--max-load", "0", "--max-connections-per-address", "64")


def start_test_server(folder):
    srv = start_server(folder, "--max-new-tokens", "3", "--max-message-bytes", str(MAX_MESSAGE),
                       "--idle-timeout-s", str(IDLE_S), "--max-buffered-ms", str(MAX_BUFFERED_MS),
                       *NO_ADMISSION_LIMITS)
    srv.idle_blocks = srv.metric("hpo_kv_blocks_used")
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_test_server(tmp_path_factory.mktemp("serve"))
    yield srv
    srv.stop()


def check_stream_frames(frames, pcm_bytes):
    """ready first, translations with increasing chunk-aligned audio_ms ending at the audio sent (then up
    to CLOSING_TURNS more at the end, which finish a sentence the last chunk's turn left open), done last."""
    assert frames[0]["type"] == "ready" and frames[0]["session"]
    assert frames[0]["trained"] is False                # the untrained test model says so
    assert "untrained" in frames[0]["model"]
    assert frames[-1]["type"] == "done"
    translations = [f for f in frames if f["type"] == "translation"]
    total_ms = pcm_bytes / 2 / 16
    audio = [f["audio_ms"] for f in translations]
    full = int(total_ms // CHUNK_MS)
    expected = [CHUNK_MS * (k + 1) for k in range(full)] + ([total_ms] if total_ms > full * CHUNK_MS else [])
    assert audio[:len(expected)] == pytest.approx(expected, abs=1e-3)
    closing = audio[len(expected):]
    assert len(closing) <= CLOSING_TURNS and closing == pytest.approx([total_ms] * len(closing), abs=1e-3)
    assert frames[-1]["audio_ms"] == pytest.approx(total_ms, abs=1e-3)
    assert frames[-1]["text"] == "".join(f["text"] for f in translations)
    assert all(f["elapsed_ms"] >= 0 and f["processing_ms"] >= 0 for f in translations)
    return translations


def test_http_endpoints(server):
    assert server.http("/healthz") == (200, "ok\n")
    status, page = server.http("/")
    assert status == 200 and "Untrained model" in page      # the untrained test model says so
    assert 'id="model"' not in page
    status, text = server.http("/metrics")
    assert status == 200 and "hpo_kv_blocks_used" in text and "hpo_active_streams 0" in text
    assert server.http("/nope")[0] == 404


def test_token_required_before_upgrade(server):
    async def attempt(headers):
        async with connect(server.url, additional_headers=headers):
            pass
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.token}):
        with pytest.raises(InvalidStatus) as info:
            run(attempt(headers))
        assert info.value.response.status_code == 401


def test_concurrent_clients(server):
    pcms = [espeak_pcm16(SENTENCES[i % len(SENTENCES)]) for i in range(16)]

    async def all_clients():
        return await asyncio.gather(*(stream_session(server, pcm, frame_bytes=4000 + 2 * i)
                                      for i, pcm in enumerate(pcms)))
    results = run(all_clients())
    sessions = set()
    for frames, pcm in zip(results, pcms):
        assert not [f for f in frames if f["type"] == "error"]
        check_stream_frames(frames, len(pcm))
        sessions.add(frames[0]["session"])
    assert len(sessions) == 16
    assert server.wait_metric("hpo_active_streams", 0) == 0
    assert server.wait_metric("hpo_kv_blocks_used", server.idle_blocks) == server.idle_blocks
    assert server.log().count("end=end") >= 16
    # the engine thread's busy time is counted (compute per chunk = busy / chunks, in bench_serve.py)
    assert server.metric("hpo_chunks_total") >= 16 and server.metric("hpo_engine_busy_seconds_total") > 0


@pytest.mark.parametrize("seed", [1])
def test_fuzzed_bad_frames_get_error_frames_and_the_stream_goes_on(server, seed):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    bad = [
        (bytes(rng.randrange(256) for _ in range(2 * rng.randrange(1, 300) + 1)), "bad_pcm"),
        ("{" + "".join(rng.choice(letters) for _ in range(rng.randrange(1, 50))), "bad_json"),
        (json.dumps([1, 2, 3]), "bad_message"),
        (json.dumps({"kind": "end"}), "bad_message"),
        (json.dumps({"type": "".join(rng.choice(letters) for _ in range(8))}), "unknown_type"),
        (b"\x00" * (MAX_MESSAGE + 2), "message_too_large"),
        ("x" * (MAX_MESSAGE + 1), "message_too_large"),
    ]
    rng.shuffle(bad)
    pcm = espeak_pcm16("Where is the train station?")
    frames = run(stream_session(server, pcm, extra=[b for b, _ in bad]))
    errors = [f for f in frames if f["type"] == "error"]
    assert [f["code"] for f in errors] == [code for _, code in bad]
    assert all(f["message"] for f in errors)
    check_stream_frames([f for f in frames if f["type"] != "error"], len(pcm))
    assert server.http("/healthz")[0] == 200


def test_unsupported_target_language_is_refused(server):
    async def go():
        async with connect(f"{server.url}?target_lang=tlh", additional_headers=auth(server)) as ws:
            frames = []
            with pytest.raises(ConnectionClosedError):
                while True:
                    frames.append(json.loads(await ws.recv()))
            return frames, ws.close_code
    frames, code = run(go())
    assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "bad_target_lang"
    assert "tlh" in frames[0]["message"] and code == 1008


def test_faster_than_real_time_client_is_held_back(server):
    pcm = b"".join(espeak_pcm16(s) for s in SENTENCES[:2])      # ~3 s sent at once
    waits = server.metric("hpo_backpressure_waits_total")
    frames = run(stream_session(server, pcm, frame_bytes=FRAME))
    check_stream_frames(frames, len(pcm))
    assert server.metric("hpo_backpressure_waits_total") > waits
    # no stream ever held more than the limit plus the one frame accepted just under it
    assert server.metric("hpo_buffered_audio_seconds_peak") <= MAX_BUFFERED_MS / 1000 + FRAME / 2 / 16000


def test_idle_client_is_finished(server):
    async def go():
        async with connect(server.url, additional_headers=auth(server)) as ws:
            return [json.loads(m) async for m in ws]
    frames = run(go())
    assert [f["type"] for f in frames] == ["ready", "error", "done"]
    assert frames[1]["code"] == "idle_timeout" and frames[2]["text"] == ""


def test_vanished_client_frees_its_blocks(server):
    pcm = espeak_pcm16("I would like a cup of coffee.")

    async def go():
        ws = await connect(server.url, additional_headers=auth(server))
        assert json.loads(await ws.recv())["type"] == "ready"
        for i in range(0, len(pcm), FRAME):
            await ws.send(pcm[i:i + FRAME])
        first = json.loads(await ws.recv())
        held = server.metric("hpo_kv_blocks_used")
        ws.transport.abort()              # no close frame: the client just vanishes
        return first, held
    first, held = run(go())
    assert first["type"] == "translation"
    assert held > server.idle_blocks      # the open dialogue held blocks
    assert server.wait_metric("hpo_kv_blocks_used", server.idle_blocks) == server.idle_blocks
    assert server.wait_metric("hpo_active_streams", 0) == 0
    assert "end=disconnect" in server.log()


def test_stream_client_prints_each_translation_with_its_audio(server, tmp_path):
    import soundfile as sf
    from click.testing import CliRunner

    from hpo_engine.server.client import stream
    pcm = espeak_pcm16(SENTENCES[0] + " " + SENTENCES[1])
    wav = tmp_path / "talk.wav"
    sf.write(wav, np.frombuffer(pcm, dtype=np.int16), 16000, subtype="PCM_16")
    result = CliRunner().invoke(stream, [str(wav), "--url", server.url, "--token", server.token, "--fast"])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("[")]
    seconds = [float(l[1:].split("s of audio")[0]) for l in lines]
    total = len(pcm) / 2 / 16000
    full = int(total // (CHUNK_MS / 1000))
    chunks = [CHUNK_MS / 1000 * (k + 1) for k in range(full)] + [total]
    assert seconds[:len(chunks)] == pytest.approx(chunks, abs=0.006)
    assert len(seconds) - len(chunks) <= CLOSING_TURNS                # closing turns, at the end
    assert seconds[len(chunks):] == pytest.approx([total] * (len(seconds) - len(chunks)), abs=0.006)
    refused = CliRunner().invoke(stream, [str(wav), "--url", server.url, "--token", "wrong", "--fast"])
    assert refused.exit_code != 0 and "401" in refused.output


@pytest.fixture
def own_server(tmp_path):
    """A server for one test that stops it (SIGTERM)."""
    srv = start_test_server(tmp_path)
    yield srv
    srv.stop()


def test_sigterm_drains_open_streams(own_server):
    server = own_server
    pcm = espeak_pcm16("This is a short test.")

    async def go():
        async with connect(server.url, additional_headers=auth(server)) as ws:
            frames = [json.loads(await ws.recv())]
            for i in range(0, len(pcm), FRAME):
                await ws.send(pcm[i:i + FRAME])
            silence = 0
            while True:            # keep the stream alive (10 ms of silence) until its first translation
                try:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                    break
                except asyncio.TimeoutError:
                    await ws.send(b"\x00\x00" * 160)
                    silence += 160
            server.proc.send_signal(signal.SIGTERM)
            frames += [json.loads(m) async for m in ws]
            return frames, ws.close_code, silence
    frames, close_code, silence = run(go())
    assert frames[1]["type"] == "translation"
    assert frames[-1]["type"] == "done"
    translations = [f for f in frames if f["type"] == "translation"]
    # the stream ends with the audio the server had read when the signal came, all of it translated
    assert CHUNK_MS <= frames[-1]["audio_ms"] == translations[-1]["audio_ms"]
    assert frames[-1]["audio_ms"] <= (len(pcm) / 2 + silence) / 16
    assert close_code in (1000, 1001)
    assert server.proc.wait(timeout=120) == 0
    assert "end=shutdown" in server.log()



def test_a_stream_that_outgrows_the_cache_fails_alone(tmp_path):
    """A KV pool of 4 blocks (64 tokens): a one-chunk talk fits (38 + 3 tokens), a longer one cannot
    (its second turn reaches 68). The long one gets an out_of_memory error, the short one finishes, and
    the server keeps serving with every block back."""
    block_bytes = 16 * 30 * 2 * 3 * 64 * 4          # SmolLM2-135M, float32
    srv = start_server(tmp_path, "--cache-memory", str(4 * block_bytes + 1000), "--max-new-tokens", "3",
                       *NO_ADMISSION_LIMITS)
    try:
        short = espeak_pcm16("Hello.")[:16000 * 2]                 # at most 1 s: one (partial) chunk
        long = espeak_pcm16(" ".join(SENTENCES[:3]))               # several chunks

        async def both():
            return await asyncio.gather(stream_session(srv, short), stream_session(srv, long))

        short_frames, long_frames = run(both())
        assert short_frames[-1]["type"] == "done"
        errors = [f for f in long_frames if f["type"] == "error"]
        assert [e["code"] for e in errors] == ["out_of_memory"] and "--cache-memory" in errors[0]["message"]
        assert "pool has 4 blocks" in errors[0]["message"]
        assert srv.http("/healthz") == (200, "ok\n")
        again = run(stream_session(srv, short))                    # the server still serves
        assert again[-1]["type"] == "done"
        assert srv.metric("hpo_kv_blocks_used") == 0
    finally:
        srv.stop()
