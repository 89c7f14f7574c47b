"""Stream a 16 kHz mono wav to `hpo-engine serve` over vLLM's realtime protocol, at the speaker's pace,
and print every server event. Needs only websockets and soundfile.

    .venv/bin/python docs/realtime_example.py docs/demo_talk.wav [--url ws://127.0.0.1:8765/v1/realtime]
"""
import argparse
import asyncio
import base64
import json

import soundfile as sf
from websockets.asyncio.client import connect


async def main(path: str, url: str, target_lang: str) -> None:
    wave, rate = sf.read(path, dtype="int16")
    if rate != 16000 or wave.ndim != 1:
        raise SystemExit(f"{path}: {rate} Hz, {wave.ndim} channel(s); the protocol takes 16 kHz mono")
    pcm = wave.tobytes()
    async with connect(url) as ws:
        print(await ws.recv())                                          # session.created
        await ws.send(json.dumps({"type": "session.update", "target_lang": target_lang}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        for i in range(0, len(pcm), 3200):                              # 100 ms of audio every 100 ms
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm[i:i + 3200]).decode()}))
            await asyncio.sleep(0.1)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        async for message in ws:                                        # deltas, then done; then it closes
            print(message)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("wav")
    p.add_argument("--url", default="ws://127.0.0.1:8765/v1/realtime")
    p.add_argument("--target-lang", default="de")
    args = p.parse_args()
    asyncio.run(main(args.wav, args.url, args.target_lang))
