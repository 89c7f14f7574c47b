"""`hpo-engine stream AUDIO`: send an audio file to a running `hpo-engine serve` as a live talk would
(PCM16 frames at the speaker's pace) and print the translation as it arrives."""
from __future__ import annotations

import asyncio
import json
import os
import time

import click


async def stream_file(url: str, pcm: bytes, token: str | None, frame_ms: int, realtime: bool, echo) -> list[dict]:
    """Send `pcm` (16 kHz PCM16) in `frame_ms` frames, then end; `echo(frame, wall_s)` for each frame
    received; returns them all."""
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    frame_bytes = 32 * frame_ms                       # 16 samples per ms, 2 bytes each
    frames = []
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        start = time.perf_counter()

        async def receive():
            async for message in ws:
                frame = json.loads(message)
                frames.append(frame)
                echo(frame, time.perf_counter() - start)

        receiver = asyncio.create_task(receive())
        for i, offset in enumerate(range(0, len(pcm), frame_bytes)):
            if realtime:   # the speaker's pace: frame i leaves when its audio has been spoken
                await asyncio.sleep(max(0.0, start + (i + 1) * frame_ms / 1000 - time.perf_counter()))
            await ws.send(pcm[offset:offset + frame_bytes])
        await ws.send(json.dumps({"type": "end"}))
        await receiver
    return frames


def print_frame(frame: dict, wall_s: float) -> None:
    kind = frame.get("type")
    if kind == "ready":
        click.echo(f"ready: {frame.get('model')} (chunks of {frame.get('chunk_ms')} ms)", err=True)
    elif kind == "translation":
        lag = wall_s - frame["audio_ms"] / 1000
        click.echo(f"[{frame['audio_ms'] / 1000:6.2f} s of audio | +{lag:4.2f} s] {frame['text']}")
    elif kind == "error":
        click.echo(f"error: {frame.get('message', frame)}", err=True)


@click.command()
@click.argument("audio", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default="ws://127.0.0.1:8765/v1/stream", show_default=True)
@click.option("--target-lang", default="de", show_default=True)
@click.option("--token", default=lambda: os.environ.get("HPO_ENGINE_TOKEN"),
              help="Bearer token (default: $HPO_ENGINE_TOKEN).")
@click.option("--frame-ms", type=click.IntRange(min=10), default=100, show_default=True,
              help="Audio per WebSocket message.")
@click.option("--fast", is_flag=True, help="Send as fast as possible instead of at the speaker's pace.")
def stream(audio, url, target_lang, token, frame_ms, fast):
    """Stream AUDIO (any format soundfile reads) to a running server; print each translation with the
    audio it covers and how long after that audio it arrived."""
    from websockets.exceptions import InvalidStatus

    from hpo_engine.speech.audio import float_to_pcm16, load_audio

    pcm = float_to_pcm16(load_audio(audio))
    sep = "&" if "?" in url else "?"
    try:
        asyncio.run(stream_file(f"{url}{sep}target_lang={target_lang}", pcm, token, frame_ms, not fast, print_frame))
    except InvalidStatus as e:
        body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
        raise click.ClickException(f"{url} refused the stream: HTTP {e.response.status_code} {body}") from None
    except OSError as e:
        raise click.ClickException(f"cannot reach {url}: {e} (is `hpo-engine serve` running?)") from None
