"""Atomic checkpoints: write everything into a temporary folder, then one rename.

A checkpoint folder `step_000010/` holds
  model.safetensors: the LLM weights training changes (all of them with train_llm = all: then the folder,
    with the config.json and tokenizer files copied from the base model, loads by Engine.from_pretrained),
  adapters.safetensors: projector.* and lora.* tensors, when trained,
  optimizer.pt, rng.pt (torch, numpy, python states), state.json (step, data position, validation, config),
  manifest.json: size and sha256 of every other file (hpo_engine/manifest.py), checked on load.
A crash mid-write leaves only a `.tmp-*` folder, which is ignored and cleaned up later. A checkpoint damaged
after it was written (truncated, edited, a flipped bit) fails its check; `--resume` then takes the newest
intact one and says which it skipped and why.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hpo_engine.manifest import IntegrityError, check_manifest, has_manifest, write_manifest

log = logging.getLogger("hpo_engine.train")
BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
                  and (p / "state.json").is_file())


def save_checkpoint(root, step: int, tensors: dict, optimizer, state: dict, base_model: Path,
                    extra: dict | None = None) -> Path:
    """`tensors`: what training changes (`Trainable.state()`: llm.*, projector.*, lora.*);
    `extra`: more tensors to keep (fp32 master weights), in extra.safetensors."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    llm = {k[4:]: v for k, v in tensors.items() if k.startswith("llm.")}
    adapters = {k: v for k, v in tensors.items() if not k.startswith("llm.")}
    for name, part in (("model.safetensors", llm), ("adapters.safetensors", adapters), ("extra.safetensors", extra)):
        if part:
            save_file({k: v.detach().contiguous() for k, v in part.items()}, str(tmp / name))
    for name in BASE_FILES:
        if (Path(base_model) / name).is_file():
            shutil.copy2(Path(base_model) / name, tmp / name)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    write_manifest(tmp)
    for f in tmp.iterdir():       # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():            # a re-run of the same step replaces its checkpoint
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def load_tensors(path) -> dict:
    """The trained tensors of a checkpoint, named as `Trainable.state()` names them."""
    path = Path(path)
    out = {}
    if (path / "model.safetensors").is_file():
        out.update({f"llm.{k}": v for k, v in load_file(str(path / "model.safetensors")).items()})
    if (path / "adapters.safetensors").is_file():
        out.update(load_file(str(path / "adapters.safetensors")))
    return out


def load_checkpoint(path, optimizer) -> tuple[dict, dict]:
    """Check the checkpoint against its manifest, restore the optimizer and RNG states in place; return
    (trained tensors, state.json). IntegrityError says what is damaged (then nothing was restored)."""
    path = Path(path)
    if has_manifest(path):
        check_manifest(path)
    try:        # a checkpoint written before manifests existed can only be checked by reading it
        state = json.loads((path / "state.json").read_text())
        tensors = load_tensors(path)
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=False)
        rng = torch.load(path / "rng.pt", weights_only=False)
    except Exception as e:
        raise IntegrityError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return tensors, state


def resume_checkpoint(root, optimizer) -> tuple[Path, dict, dict]:
    """Load the newest intact checkpoint under `root` (see load_checkpoint): (its folder, tensors, state).
    Each damaged one skipped is logged with the reason; FileNotFoundError when none is intact."""
    found = list_checkpoints(root)
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint under {root}")
    damaged = []
    for path in reversed(found):
        try:
            tensors, state = load_checkpoint(path, optimizer)
        except IntegrityError as e:
            damaged.append(str(e))
            log.warning("--resume: skipping %s: %s", path.name, e)
            continue
        if damaged:
            log.warning("--resume: resuming from %s (step %d), the newest intact checkpoint", path.name, state["step"])
        return path, tensors, state
    raise FileNotFoundError(f"--resume: every checkpoint under {root} is damaged: " + "; ".join(damaged))


def load_extra(path) -> dict:
    return load_file(str(Path(path) / "extra.safetensors"))


def prune(root, keep_best: int, metric: str) -> None:
    """Keep the latest checkpoint and the `keep_best` best by state.json's validation[metric]
    (higher is better); checkpoints never validated count as worst. Stale temp folders go too."""
    root = Path(root)
    for tmp in root.glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    ckpts = list_checkpoints(root)
    if not ckpts:
        return
    def score(p):
        try:
            v = json.loads((p / "state.json").read_text()).get("validation") or {}
        except ValueError:      # a damaged checkpoint ranks last (resume_checkpoint says why)
            return float("-inf")
        return v.get(metric, float("-inf"))
    ranked = sorted(ckpts[:-1], key=lambda p: (score(p), p.name), reverse=True)
    for p in ranked[keep_best:]:
        shutil.rmtree(p)
