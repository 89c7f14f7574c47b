"""A client of vLLM's realtime transcription protocol, written from its description alone (vLLM's
docs: ws://HOST/v1/realtime; session.created; session.update with the model; input_audio_buffer.commit
to start; input_audio_buffer.append with base64 PCM16 16 kHz mono; commit with final=true at the end;
transcription.delta / transcription.done / error from the server). It imports nothing from
hpo_engine, so the server is tested against the protocol, not against itself."""
import base64
import json

from websockets.asyncio.client import connect


def pcm_events(pcm: bytes, chunk_bytes: int = 3200) -> list[str]:
    """Append events of 100 ms each (3200 bytes of 16 kHz PCM16)."""
    return [json.dumps({"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(pcm[i:i + chunk_bytes]).decode("ascii")})
            for i in range(0, len(pcm), chunk_bytes)]


async def transcribe(url: str, pcm: bytes, model: str | None = None, token: str | None = None,
                     extra_session: dict | None = None, before_audio: list | None = None,
                     after_audio: list | None = None) -> list[dict]:
    """One utterance as vLLM's example client streams it; returns every server event, in order,
    until transcription.done (or the connection closes). model="served" sends the name the server
    announced in session.created (hpo-engine's extension field "model"). `before_audio` / `after_audio`: raw frames
    (str or bytes) sent around the audio, for tests of bad events."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    events = []
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        events.append(json.loads(await ws.recv()))              # session.created
        if model == "served":                                   # the name the server gives in session.created
            model = events[0]["model"]
        await ws.send(json.dumps({"type": "session.update", "model": model, **(extra_session or {})}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        for frame in before_audio or []:
            await ws.send(frame)
        for event in pcm_events(pcm):
            await ws.send(event)
        for frame in after_audio or []:
            await ws.send(frame)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        async for message in ws:
            events.append(json.loads(message))
            if events[-1]["type"] == "transcription.done":
                break
    return events
