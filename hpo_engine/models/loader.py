"""Load a Hugging Face model folder (config.json + one or sharded safetensors) into `CausalLM`."""
import json
from pathlib import Path

import torch
from safetensors import safe_open

from hpo_engine.config import ModelConfig, rope_inv_freq
from hpo_engine.models.decoder import CausalLM


class CheckpointError(ValueError):
    pass


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard(s) {missing} named in {index.name} are missing")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors file (and no model.safetensors.index.json)")
    return files


def load_model(path, device="cpu", dtype=torch.float32) -> CausalLM:
    """Build the model on the meta device, then assign the checkpoint's tensors (cast to `dtype`).

    Errors name the problem: unsupported architecture, a missing tensor, a tensor of the wrong shape.
    """
    path = Path(path)
    config = ModelConfig.from_folder(path)
    with torch.device("meta"):
        model = CausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    state = {}
    for file in safetensors_files(path):
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in expected:
                    continue            # e.g. rotary inv_freq buffers, or a tied lm_head saved anyway
                tensor = f.get_tensor(name)
                if tensor.shape != expected[name]:
                    raise CheckpointError(f"{file.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                                          f"expected {tuple(expected[name])}")
                state[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:3])}{more}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(config).to(device)
    return model.eval()


def load_tokenizer(path):
    """The folder's tokenizer, or None when it has no tokenizer files (the token-level API still works)."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)
