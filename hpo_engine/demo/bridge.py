"""Train the CTC bridge (hpo_engine.speech.ctc_bridge) on the demo talks' encoder frames.

    OUT/<split>.jsonl + feats/*.npy (demo data)  -->  OUT/bridge/bridge.safetensors, bridge_config.json,
                                                      log.jsonl (one line per epoch), state.pt (resume)
    assemble_sst(OUT/bridge, LLM, DEST)            -->  an SST checkpoint: Whisper tiny.en + the bridge + LLM

The targets are each talk's English sentences joined by spaces, as the LLM's tokenizer writes them.
The classes are every LLM token of the training transcripts (the bridge cannot write a token it never
saw: `coverage` in the log is the share of valid-set tokens it can write). The LLM is never run:
only its tokenizer. Resumable by epoch; the best epoch by valid token error rate is kept.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hpo_engine.speech.ctc_bridge import CTCBridge, CTCBridgeConfig, ctc_loss

BRIDGE_FILE = "bridge.safetensors"
CONFIG_FILE = "bridge_config.json"


def transcripts(manifest: Path, tokenizer) -> list[tuple[Path, list[int]]]:
    """(features path, transcript token ids) per talk of a demo manifest."""
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        ids = tokenizer.encode(" ".join(rec["src_segments"]), add_special_tokens=False)
        out.append((manifest.parent / rec["features"], ids))
    return out


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def token_error_rate(bridge: CTCBridge, talks, frames_of) -> float:
    errors = total = 0
    with torch.inference_mode():
        for path, ids in talks:
            errors += edit_distance(bridge.greedy_ids(frames_of(path)), ids)
            total += len(ids)
    return errors / max(total, 1)


def length_batches(lengths: list[int], batch_talks: int) -> list[list[int]]:
    """Talk indices in batches of similar length (little padding); the epoch shuffles the batches."""
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [by_length[i:i + batch_talks] for i in range(0, len(by_length), batch_talks)]


def load_bridge(folder: Path) -> CTCBridge:
    cfg = CTCBridgeConfig.from_dict(json.loads((Path(folder) / CONFIG_FILE).read_text()))
    bridge = CTCBridge(cfg)
    bridge.load_state_dict(load_file(Path(folder) / BRIDGE_FILE))
    return bridge.eval()


def train_bridge(data_dir, tokenizer, epochs: int = 12, batch_talks: int = 24, lr: float = 1e-3,
                 seed: int = 0, progress: bool = True, **config) -> dict:
    """Train (or resume) OUT/bridge; returns the last log line."""
    from tqdm import tqdm

    data_dir = Path(data_dir)
    out = data_dir / "bridge"
    out.mkdir(exist_ok=True)
    train = transcripts(data_dir / "train.jsonl", tokenizer)
    valid = transcripts(data_dir / "valid.jsonl", tokenizer)
    if not train or not valid:
        raise ValueError(f"{data_dir}: train.jsonl and valid.jsonl must both hold talks "
                         f"({len(train)} and {len(valid)} found)")
    cache: dict[Path, torch.Tensor] = {}

    def frames_of(path: Path) -> torch.Tensor:
        if path not in cache:
            cache[path] = torch.from_numpy(np.load(path).astype(np.float32))
        return cache[path]

    vocab = sorted({t for _, ids in train for t in ids})
    class_of = {t: j + 1 for j, t in enumerate(vocab)}
    d_encoder = frames_of(train[0][0]).shape[1]
    cfg = CTCBridgeConfig(d_encoder=d_encoder, vocab_ids=tuple(vocab), **config)
    torch.manual_seed(seed)
    bridge = CTCBridge(cfg)
    optimizer = torch.optim.AdamW(bridge.parameters(), lr=lr, weight_decay=0.01)
    batches = length_batches([frames_of(p).shape[0] for p, _ in train], batch_talks)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(batches),
                                                   pct_start=0.1)
    state_file, log_file = out / "state.pt", out / "log.jsonl"
    start, best = 0, float("inf")
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        if state["config"] != cfg.to_dict():
            raise RuntimeError(f"{state_file} was trained with another vocabulary or shape: remove {out} to restart")
        bridge.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, best = state["epoch"], state["best"]
    covered = sum(t in class_of for _, ids in valid for t in ids) / max(1, sum(len(ids) for _, ids in valid))
    record = {}
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(len(batches))
        bridge.train()
        losses = []
        for b in tqdm(order, desc=f"bridge epoch {epoch + 1}/{epochs}", disable=not progress):
            batch = [train[i] for i in batches[b]]
            frames = [frames_of(p) for p, _ in batch]
            padded = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
            # fp32: bf16 autocast measured 10x (forward) to 40x (backward) slower on this CPU
            loss = ctc_loss(bridge, padded, torch.tensor([len(f) for f in frames]),
                            [ids for _, ids in batch], class_of)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bridge.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        bridge.eval()
        ter = token_error_rate(bridge, valid, frames_of)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "valid_token_error_rate": ter,
                  "valid_coverage": covered, "classes": len(vocab) + 1, "seconds": time.perf_counter() - t0}
        if ter < best:
            best = ter
            save_file({k: v.contiguous() for k, v in bridge.state_dict().items()}, out / BRIDGE_FILE)
            (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
        torch.save({"config": cfg.to_dict(), "model": bridge.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch + 1, "best": best}, state_file.with_suffix(".tmp"))
        state_file.with_suffix(".tmp").replace(state_file)
        with open(log_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            print(json.dumps(record), flush=True)
    return record


def assemble_sst(bridge_dir, llm_folder, dest, description: str = "") -> Path:
    """An SST checkpoint folder: Whisper tiny.en + the trained bridge + the LLM (untrained: the LLM reads
    the bridge's rows zero-shot until SFT), or, with `bridge_dir` None, Whisper tiny.en's encoder and
    decoder as a transcriber + the LLM. Written to DEST.tmp, then renamed."""
    import shutil

    from transformers import AutoTokenizer

    from hpo_engine import chat_template
    from hpo_engine.speech import load_tiny_en_encoder
    from hpo_engine.speech.frontend import FRAME_MS, HPO_CHUNK_MS
    from hpo_engine.sst.checkpoint import save_sst
    from hpo_engine.sst.default_model import default_config

    from hpo_engine.speech.transcriber import load_tiny_en_transcriber

    dest = Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(llm_folder)
    config = default_config(tokenizer, chat_template.SPEECH_PLACEHOLDER)
    if bridge_dir is None:
        from transformers import AutoConfig
        bridge = load_tiny_en_transcriber(AutoConfig.from_pretrained(llm_folder).hidden_size)
        kind = "Whisper tiny.en transcriber"
    else:
        bridge, kind = load_bridge(bridge_dir), "CTC bridge"
    config.chunk_ms = HPO_CHUNK_MS
    config.frames_per_chunk = HPO_CHUNK_MS // (FRAME_MS * bridge.cfg.stack)     # nominal: rows vary per chunk
    config.description = description or f"Whisper tiny.en + {kind} + {Path(llm_folder).name} (LLM not fine-tuned)"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_sst(tmp, llm_folder, load_tiny_en_encoder(), bridge, config)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
