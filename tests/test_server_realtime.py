"""`/v1/realtime` (vLLM's realtime protocol) against an independent client (tests/realtime_client.py,
written from the protocol's description): the translation equals /v1/stream's on the same audio; bad
base64, unknown events, binary frames and a commit with no audio get error events and the session
goes on; auth, language and model checks; a vanished client frees its blocks."""
import asyncio
import base64
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from realtime_client import pcm_events, transcribe
from test_server_helpers import run, start_server, stream_session
from test_sst_helpers import espeak_pcm16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("realtime"), "--max-new-tokens", "3", "--max-streams", "8",
                       "--max-load", "0", "--max-message-bytes", "65536")
    srv.idle_blocks = srv.metric("hpo_kv_blocks_used")
    yield srv
    srv.stop()


def realtime_url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/realtime"


@pytest.fixture(scope="module")
def pcm():
    return espeak_pcm16("Where is the train station? I would like a ticket to Berlin, please.")


def test_translation_equals_the_stream_protocols(server, pcm):
    events = run(transcribe(realtime_url(server), pcm, token=server.token))
    assert events[0]["type"] == "session.created" and events[0]["id"] and isinstance(events[0]["created"], int)
    assert [e for e in events if e["type"] == "error"] == []
    deltas = [e for e in events if e["type"] == "transcription.delta"]
    done = events[-1]
    assert done["type"] == "transcription.done"
    assert done["text"] == "".join(e["delta"] for e in deltas)
    assert all(e["delta"] for e in deltas)
    audio = [e["audio_ms"] for e in deltas]
    assert audio == sorted(audio) and all(0 < a <= len(pcm) / 32 + 1e-3 for a in audio)
    usage = done["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    frames = run(stream_session(server, pcm))         # the same audio over /v1/stream: same translation
    assert frames[-1]["type"] == "done" and frames[-1]["text"] == done["text"]
    assert done["text"].strip()


def test_bad_events_get_error_events_and_the_session_goes_on(server, pcm):
    bad = [
        (json.dumps({"type": "input_audio_buffer.append", "audio": "not base64 !!"}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}),
         "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append"}), "invalid_audio"),
        (json.dumps({"type": "response.create"}), "unknown_event"),
        (json.dumps({"kind": "x"}), "invalid_event"),
        ("{not json", "invalid_json"),
        (b"\x00\x01" * 100, "invalid_event"),                    # binary: not part of the protocol
        ("[" * 100 + "]" * 100, "invalid_json"),                  # too deep to parse
        (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 70000}), "message_too_large"),
    ]
    # a final commit before any audio: an error, and the session is still open for the audio
    empty = json.dumps({"type": "input_audio_buffer.commit", "final": True})
    events = run(transcribe(realtime_url(server), pcm, token=server.token,
                            before_audio=[empty] + [b for b, _ in bad[:5]], after_audio=[b for b, _ in bad[5:]]))
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["input_audio_buffer_commit_empty"] + [code for _, code in bad]
    assert all(e["error"] for e in errors)
    good = run(transcribe(realtime_url(server), pcm, token=server.token))
    assert events[-1]["type"] == "transcription.done" and events[-1]["text"] == good[-1]["text"]


def test_session_update_checks_model_and_target_language(server, pcm):
    async def first_error(session: dict) -> dict:
        async with connect(realtime_url(server), additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", **session}))
            return json.loads(await ws.recv())
    wrong_model = run(first_error({"model": "mistralai/Voxtral-Mini-4B-Realtime-2602"}))
    assert wrong_model["type"] == "error" and wrong_model["code"] == "model_not_found"
    assert "Voxtral" in wrong_model["error"]
    wrong_lang = run(first_error({"target_lang": "xx"}))
    assert wrong_lang["code"] == "bad_target_lang" and "xx" in wrong_lang["error"]
    # the served model's own name is accepted, with a supported language (that client gets a translation)
    events = run(transcribe(realtime_url(server), pcm, token=server.token, model="served",
                            extra_session={"target_lang": "de"}))
    assert events[0]["model"] and [e for e in events if e["type"] == "error"] == []
    assert events[-1]["type"] == "transcription.done" and events[-1]["text"].strip()


def test_token_is_required(server, pcm):
    with pytest.raises(InvalidStatus) as e:
        run(transcribe(realtime_url(server), pcm, token=None))
    assert e.value.response.status_code == 401


def test_vanished_client_frees_its_blocks(server, pcm):
    async def vanish():
        async with connect(realtime_url(server), additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
            await ws.recv()
            for event in pcm_events(pcm)[:30]:          # 3 s of audio, then the client is gone
                await ws.send(event)
            await asyncio.sleep(1.0)
    run(vanish())
    assert server.wait_metric("hpo_active_streams", 0) == 0
    assert server.wait_metric("hpo_kv_blocks_used", server.idle_blocks) == server.idle_blocks
