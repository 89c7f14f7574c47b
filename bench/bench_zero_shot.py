"""How well the LLM translates the SST dialogue zero-shot, with the speech rows from the CTC bridge and,
as its ceiling, from the transcript itself; and whether the output depends on the speech (the same
talks with their 1.12 s chunks shuffled, or silent) (an oracle bridge: the LLM's own embedding rows of the
English tokens, each placed in the chunk where it is spoken).

Run:    .venv/bin/python bench/bench_zero_shot.py runs/de [--model runs/de/bridge/sst] [--talks 20]
            [--rows oracle,bridge] [--target-lang de] [--threads 1] [--json out.json]

Data: the demo's held-out test talks (OUT/test: unseen voice, unseen sentences); one talk = one
hypothesis (its sentences' translations joined) scored against its references joined: corpus BLEU and
chrF (sacrebleu), the length ratio (hypothesis / reference characters) and, for the bridge, the error
rate of what it hears against the English transcript (a CTC bridge: LLM tokens of its greedy path; a
transcriber: the words it commits, served chunk by chunk). Oracle token times: each sentence's tokens
spread evenly over its spoken span (the synthesiser's sentence times), as the SFT rule spreads words.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def oracle_chunks(line: dict, tokenizer, chunk_s: float, num_chunks: int) -> list[list[int]]:
    """Chunk k's transcript token ids: sentence i's tokens spread evenly over [start_i, end_i]."""
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    for i, (seg, english) in enumerate(zip(line["segments"], line["src_segments"])):
        ids = tokenizer.encode((" " if i else "") + english, add_special_tokens=False)
        for j, t in enumerate(ids):
            at = seg["start"] + (j + 0.5) * (seg["end"] - seg["start"]) / len(ids)
            chunks[min(int(at // chunk_s), num_chunks - 1)].append(t)
    return chunks


def translate_oracle(model, line: dict, wave_len_s: float, target_lang: str) -> str:
    from hpo_engine.sst.stream import PendingChunk, SSTStream

    stream = SSTStream(model, target_lang)
    chunk_s = model.config.chunk_ms / 1000
    table = model.engine.model.model.embed_tokens.weight.detach()
    try:
        for k, ids in enumerate(oracle_chunks(line, model.tokenizer, chunk_s, int(np.ceil(wave_len_s / chunk_s)))):
            stream.pending.append(PendingChunk(table[ids], (k + 1) * chunk_s * 1000, time.perf_counter()))
        stream.drain()
        return stream.text
    finally:
        stream.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="the demo data folder (python -m hpo_engine.demo data)")
    ap.add_argument("--model", type=Path, default=None, help="SST checkpoint with a CTC bridge (default DATA/bridge/sst)")
    ap.add_argument("--talks", type=int, default=20)
    ap.add_argument("--rows", default="oracle,bridge",
                    help="any of oracle, bridge, shuffled (the audio's chunks reordered), silence")
    ap.add_argument("--target-lang", default="de")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hpo_engine.demo.bridge import edit_distance
    from hpo_engine.metrics.quality import corpus_bleu, corpus_chrf, default_bleu_tokenizer
    from hpo_engine.sst.config import UNSPACED_LANGUAGES
    from hpo_engine.speech.audio import SAMPLE_RATE, load_audio
    from hpo_engine.speech.transcriber import WhisperTranscriber, word_key
    from hpo_engine.sst.checkpoint import open_sst
    from hpo_engine.sst.simulate import simulate

    model = open_sst(args.model or args.data / "bridge" / "sst")
    lines = [json.loads(x) for x in (args.data / "test.jsonl").read_text().splitlines()][:args.talks]
    sep = "" if args.target_lang in UNSPACED_LANGUAGES else " "
    refs = [sep.join(line["tgt_segments"]) for line in lines]
    out = {"model": str(model.path), "talks": len(lines), "date": time.strftime("%Y-%m-%d"), "rows": {}}
    for mode in args.rows.split(","):
        t0 = time.perf_counter()
        hyps, errors, total = [], 0, 0
        for line in lines:
            wave = load_audio(args.data / "test" / "wav" / f"{line['id']}.wav")
            if mode == "oracle":
                hyps.append(translate_oracle(model, line, len(wave) / SAMPLE_RATE, args.target_lang))
                continue
            if mode == "shuffled":      # the same audio, its chunks in a seeded random order
                step = model.config.chunk_ms * SAMPLE_RATE // 1000
                pieces = [wave[i:i + step] for i in range(0, len(wave), step)]
                wave = np.concatenate([pieces[i] for i in np.random.default_rng(0).permutation(len(pieces))])
            elif mode == "silence":
                wave = np.zeros_like(wave)
            hyps.append(simulate(model, wave, args.target_lang).prediction)
            if mode != "bridge":
                continue
            if isinstance(model.adapter, WhisperTranscriber):     # word errors of what it commits, as served
                frontend = model.new_frontend()
                frontend.push(wave)
                frontend.flush()
                heard = [word_key(w) for w in frontend.state.text]
                truth = [word_key(w) for w in " ".join(line["src_segments"]).split()]
            else:                                                   # LLM-token errors of the CTC path
                heard = model.adapter.greedy_ids(
                    torch.from_numpy(np.load(args.data / line["features"]).astype(np.float32)))
                truth = model.tokenizer.encode(" ".join(line["src_segments"]), add_special_tokens=False)
            errors, total = errors + edit_distance(heard, truth), total + len(truth)
        row = {"BLEU": corpus_bleu(hyps, refs, default_bleu_tokenizer(args.target_lang)), "chrF": corpus_chrf(hyps, refs),
               "length_ratio": sum(map(len, hyps)) / sum(map(len, refs)), "seconds": time.perf_counter() - t0,
               "examples": [{"hypothesis": h, "reference": r} for h, r in list(zip(hyps, refs))[:3]]}
        if mode == "bridge":       # LLM tokens (CTC bridge) or words (transcriber) of the English
            row["token_error_rate" if not isinstance(model.adapter, WhisperTranscriber) else "word_error_rate"] = \
                errors / max(total, 1)
        out["rows"][mode] = row
        print(mode, json.dumps({k: v for k, v in row.items() if k != "examples"}), flush=True)
        for ex in row["examples"]:
            print("   hyp:", ex["hypothesis"][:200], "\n   ref:", ex["reference"][:200], flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
