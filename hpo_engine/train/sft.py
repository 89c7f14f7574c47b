"""SFT trajectories from (speech window, sentence times, translations) by a monotonic rule.

Rule (k = `lag_chunks`, c = chunk seconds, chunk j is answered in assistant turn j):
sentence i with source span [s_i, e_i] gets the chunks a_i = floor(s_i / c) + k .. b_i =
max(a_i, ceil(e_i / c) - 1 + k), both clipped to the window's last chunk, and a_i raised to the
last chunk used by sentence i - 1 (output never goes back in time). Its n_i units (words; characters
for zh/ja) are spread evenly: unit j (0-based) goes to chunk a_i + floor(j (b_i - a_i + 1) / n_i).
Every answer ends with the stop token; a chunk with no units is a wait (a bare stop token).
`sft_step` is one update on such trajectories.
"""
from __future__ import annotations

import math
import time

import torch

from hpo_engine.metrics.segment_latency import is_char_language, latency_units
from hpo_engine.train.master_weights import optimizer_step
from hpo_engine.train.policy import assistant_logprobs, micro_batches
from hpo_engine.train.rollout import pack_dialogue


def monotonic_schedule(spans, references, num_chunks: int, chunk_seconds: float, lag_chunks: int,
                       lang: str) -> list[list[str]]:
    """The units each chunk's answer holds."""
    per_chunk: list[list[str]] = [[] for _ in range(num_chunks)]
    last = 0
    for (start, end), ref in zip(spans, references):
        units = latency_units(ref, lang)
        if not units:
            continue
        a = min(max(int(math.floor(start / chunk_seconds)) + lag_chunks, last), num_chunks - 1)
        b = min(max(a, int(math.ceil(end / chunk_seconds)) - 1 + lag_chunks), num_chunks - 1)
        n = len(units)
        for j, u in enumerate(units):
            per_chunk[a + (j * (b - a + 1)) // n].append(u)
        last = b
    return per_chunk


def sft_answers(window, codec, chunk_seconds: float, lag_chunks: int, lang: str, stop_id: int) -> list[list[int]]:
    """Token ids of each assistant turn (stop token included) for one window."""
    sep = "" if is_char_language(lang) else " "
    answers, written = [], False
    for units in monotonic_schedule(window.segments, window.references, window.num_chunks, chunk_seconds,
                                    lag_chunks, lang):
        text = sep.join(units)
        if text and written and sep and codec.tokenizer is not None:
            text = " " + text      # a subword tokenizer needs the space between words of two turns
        written = written or bool(text)
        answers.append((codec.encode(text) if text else []) + [stop_id])
    return answers


def sft_step(run, step: int) -> dict:
    """One SFT update: cross-entropy (token mean) on the assistant tokens of rule-built trajectories.
    Under torchrun each rank builds and backpropagates its share of the batch, divided by the global
    token count, and the gradients are summed over ranks (train/distributed.py)."""
    cfg, d, world = run.cfg, run.cfg.dialogue, run.world
    t0 = time.perf_counter()
    windows = run.loader.next_batch(cfg.sft.batch_size)        # the whole batch, on every rank
    samples = []
    for b in world.share(len(windows)):
        lang = run.language_of(windows[b])    # a window may name its own (mixed-language SFT)
        fmt = run.format_for(lang)
        samples.append(pack_dialogue(windows[b], fmt, sft_answers(windows[b], run.codec, d.chunk_seconds,
                                                                  cfg.sft.lag_chunks, lang, fmt.stop_id),
                                     index=b, rows_per_embedding=run.rows_per_embedding))
    num_global_tokens = int(world.sum({"n": sum(int(s.assistant_mask.sum()) for s in samples)})["n"])
    run.trainable.zero_grad()
    total = 0.0
    for mb in micro_batches(samples, range(len(samples)), cfg.optim.max_tokens_per_microbatch):
        lps, _ = assistant_logprobs(run.model, [samples[i] for i in mb],   # full softmax, temperature 1
                                    checkpointing=cfg.optim.gradient_checkpointing, embed_speech=run.embed_speech)
        loss = -torch.cat(lps).sum() / num_global_tokens
        loss.backward()
        total += float(loss.detach())
    world.sum_gradients(run.trainable.parameters())
    grad_norm = optimizer_step(run)
    run.engine.reset_prefix_cache()
    seconds = time.perf_counter() - t0
    totals = world.sum({"loss": total, "tokens": sum(s.num_tokens for s in samples)})
    return {"sft_loss": totals["loss"], "grad_norm": grad_norm, "target_tokens": num_global_tokens,
            "update_s": seconds, "update_tokens_per_s": totals["tokens"] / max(seconds, 1e-9)}
