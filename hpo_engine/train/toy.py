"""A toy SST task for tests and benchmarks: a tiny random Qwen3 model without tokenizer, random
speech features, and references made of one target word, so the best policy is known (write the
target token, early).

    python -m hpo_engine.train.toy runs/tiny_cpu     # writes model/, features.npy, train.jsonl, valid.jsonl

Token ids of the toy dialogue (vocabulary 64): outputs 0..16, stop 17 (every id above it is banned,
as HPO bans ids above <|im_end|>), template 40..44, placeholder 63. Words are "t<id>".
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TARGET = 7
STOP = 17
VOCAB = 64
HIDDEN = 64


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    import torch
    import transformers
    cfg = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   head_dim=32, max_position_embeddings=1024, tie_word_embeddings=False,
                                   eos_token_id=STOP, bos_token_id=0, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(folder)
    return folder


def write_toy_task(folder, num_train: int = 8, num_valid: int = 2, frames: int = 8, seed: int = 0,
                   model: bool = True) -> Path:
    """Windows of `frames` frames (4 chunks of 2), two sentences each, references of TARGET words."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model:
        build_tiny_model(folder / "model", seed)
    rng = np.random.default_rng(seed)
    n = num_train + num_valid
    np.save(folder / "features.npy", rng.normal(0, 1, (n, frames, HIDDEN)).astype(np.float32))
    word = f"t{TARGET}"
    for name, rows in (("train", range(num_train)), ("valid", range(num_train, n))):
        with open(folder / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps({
                    "id": f"toy-{row}", "features": "features.npy", "features_row": row,
                    "window_start": 0.0, "window_end": 4.0,
                    "segments": [{"start": 0.0, "end": 1.8}, {"start": 1.8, "end": 3.6}],
                    "src_segments": ["a b c d", "e f g h"],
                    "tgt_segments": [" ".join([word] * 4), " ".join([word] * 4)]}) + "\n")
    return folder


if __name__ == "__main__":
    print(write_toy_task(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny_cpu"))
