"""vLLM's realtime protocol at `/v1/realtime`, over the same sessions, limits and engine as /v1/stream.

All frames are JSON text. client -> server:
  {"type": "session.update", "model": M, "target_lang": L}   both optional; `target_lang` is hpo-engine's
        extension (vLLM's `language` is the source's). Only before the first audio.
  {"type": "input_audio_buffer.append", "audio": B64}         base64 PCM16 LE, mono, 16 kHz
  {"type": "input_audio_buffer.commit"}                       vLLM's start signal. Audio is translated as
        it arrives either way, so it changes nothing here.
  {"type": "input_audio_buffer.commit", "final": true}        no more audio: the rest is translated
server -> client:
  {"type": "session.created", "id": ID, "created": UNIX_S, "model": NAME, "target_lang": L}   NAME: what
        session.update's "model" may say (extension fields, like target_lang)
  {"type": "transcription.delta", "delta": TEXT, "audio_ms": A, "elapsed_ms": E}   the translation's next
        piece; audio_ms / elapsed_ms as in /v1/stream (a vLLM client ignores them)
  {"type": "transcription.done", "text": FULL, "usage": {...}}
  {"type": "error", "error": MESSAGE, "code": CODE}
One utterance per connection: after transcription.done the server closes it (vLLM keeps the
connection for the next utterance).
"""
from __future__ import annotations

import base64
import binascii
import json
import time

PATH = "/v1/realtime"
APPEND, COMMIT, UPDATE = "input_audio_buffer.append", "input_audio_buffer.commit", "session.update"
CLIENT_EVENTS = (UPDATE, APPEND, COMMIT)


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def parse_event(message: str) -> dict:
    """A client event: a JSON object with a known "type" (ProtocolError names what is wrong)."""
    try:
        event = json.loads(message)
    except (ValueError, RecursionError) as e:
        raise ProtocolError("invalid_json", f"event is not JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("invalid_event", "events are JSON objects with a string \"type\"")
    if event["type"] not in CLIENT_EVENTS:
        raise ProtocolError("unknown_event", f"unknown event type {event['type']!r} (known: {', '.join(CLIENT_EVENTS)})")
    return event


def decode_audio(event: dict) -> bytes:
    """The PCM16 bytes of an append event."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise ProtocolError("invalid_audio", "input_audio_buffer.append needs \"audio\": base64 PCM16 16 kHz mono")
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("invalid_audio", f"\"audio\" is not base64 ({e}); nothing was appended") from None
    if not pcm:
        raise ProtocolError("invalid_audio", "\"audio\" is empty; nothing was appended")
    if len(pcm) % 2:
        raise ProtocolError("invalid_audio", f"\"audio\" decodes to {len(pcm)} bytes: PCM16 needs an even count; "
                            "nothing was appended")
    return pcm


def is_final(event: dict) -> bool:
    return event["type"] == COMMIT and event.get("final") is True


def server_event(frame: dict) -> dict | None:
    """A /v1/stream frame as the realtime protocol's event (None: nothing to send)."""
    kind = frame["type"]
    if kind == "ready":
        return {"type": "session.created", "id": frame["session"], "created": int(time.time()),
                "model": frame["model_id"], "target_lang": frame["target_lang"]}
    if kind == "translation":
        if not frame["text"]:
            return None             # a chunk that added nothing: vLLM sends only text
        return {"type": "transcription.delta", "delta": frame["text"], "audio_ms": frame["audio_ms"],
                "elapsed_ms": frame["elapsed_ms"]}
    if kind == "done":
        prompt, generated = frame.get("prompt_tokens", 0), frame.get("generated_tokens", 0)
        return {"type": "transcription.done", "text": frame["text"],
                "usage": {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}}
    if kind == "error":
        return {"type": "error", "error": frame["message"], "code": frame["code"]}
    raise ValueError(f"no realtime event for a {kind!r} frame")
