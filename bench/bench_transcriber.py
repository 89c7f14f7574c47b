"""What Whisper tiny.en's decoder hears of the demo's unseen test voice: decoded whole vs served.

    whole:  each test sentence alone (0.2 s of silence around it), Whisper's standard input (log-mel
            padded to 30 s) -> encoder -> our greedy decoder (hpo_engine.speech.whisper_decoder)
    served: the demo's test talks through SpeechFrontEnd + WhisperTranscriber chunk by chunk (1.12 s
            chunks, 4 s left context): the words it commits, and the seconds each chunk takes

Run:    .venv/bin/python bench/bench_transcriber.py runs/de [--sentences 20] [--talks 6] [--threads 1]

Word error rate: word edit distance over reference words (lower case, letters and digits, as the
transcriber compares words). DATA is `python -m hpo_engine.demo data` output (its test talks and wavs).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--talks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hpo_engine.demo.bridge import edit_distance
    from hpo_engine.demo.pairs import load_pairs
    from hpo_engine.demo.synth import TEST_VOICE, synthesize, trim_silence
    from hpo_engine.speech.audio import load_audio
    from hpo_engine.speech.encoder import load_tiny_en_encoder
    from hpo_engine.speech.frontend import SpeechFrontEnd
    from hpo_engine.speech.mel import log_mel_spectrogram
    from hpo_engine.speech.transcriber import load_tiny_en_transcriber, word_key

    def wer(pairs):
        errors = sum(edit_distance([word_key(w) for w in h.split()], [word_key(w) for w in r.split()])
                     for h, r in pairs)
        return errors / sum(len(r.split()) for _, r in pairs)

    class CharTokenizer:        # the LLM side does not matter here: only the committed words are read
        def encode(self, text, add_special_tokens=False):
            return [0] * len(text)

    encoder = load_tiny_en_encoder()
    transcriber = load_tiny_en_transcriber(d_llm=8).attach_llm(torch.zeros(1, 8), CharTokenizer())
    decoder, tok = transcriber.decoder, transcriber.whisper_tokenizer
    pad = np.zeros(3200, np.float32)
    whole = []
    for english, _ in load_pairs(None)["test"][:args.sentences]:
        wave = np.concatenate([pad, trim_silence(synthesize(english, TEST_VOICE)), pad])
        mel = torch.nn.functional.pad(log_mel_spectrogram(torch.from_numpy(wave)), (0, 3000))[:, :3000]
        with torch.inference_mode():
            frames = encoder(mel[None])[0]
        whole.append((tok.decode(decoder.transcribe(frames, max_new_tokens=100)), english))
    lines = [json.loads(x) for x in (args.data / "test.jsonl").read_text().splitlines()][:args.talks]
    served, seconds, audio_s = [], [], 0.0
    for line in lines:
        wave = load_audio(args.data / "test" / "wav" / f"{line['id']}.wav")
        audio_s += len(wave) / 16000
        frontend = SpeechFrontEnd(encoder, transcriber)
        for i in range(0, len(wave), 17920):            # one 1.12 s chunk at a time, as a live stream
            t0 = time.perf_counter()
            frontend.push(wave[i:i + 17920])
            seconds.append(time.perf_counter() - t0)
        frontend.flush()
        served.append(("".join(frontend.state.text), " ".join(line["src_segments"])))
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": args.threads,
                      "whole": {"sentences": len(whole), "word_error_rate": round(wer(whole), 3)},
                      "served": {"talks": len(served), "audio_s": round(audio_s, 1),
                                 "word_error_rate": round(wer(served), 3),
                                 "chunk_s_mean": round(float(np.mean(seconds)), 3),
                                 "chunk_s_max": round(float(np.max(seconds)), 3)}}))
    for h, r in served[:2]:
        print("   heard:", h.strip()[:160], "\n   said: ", r[:160])


if __name__ == "__main__":
    main()
