"""The trained LLM part of an SST checkpoint, kept small: `speech/llm_adapter.safetensors`.

    lora.A.<module> [r, in], lora.B.<module> [out, r]    W += B A  (the LoRA scale folded into B)
    llm.<name>                                           a replacement tensor (e.g. a trained layer)

The LLM files of the folder stay the base model's (hard links); `apply_adapter` changes the loaded
weights in place, so the engine serves the trained model at the base model's cost.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hpo_engine.models.lora import merge_lora_tensors

ADAPTER_FILE = "speech/llm_adapter.safetensors"


def read_adapter(folder) -> dict[str, torch.Tensor] | None:
    path = Path(folder) / ADAPTER_FILE
    return load_file(str(path)) if path.is_file() else None


def write_adapter(folder, tensors: dict[str, torch.Tensor]) -> None:
    path = Path(folder) / ADAPTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(path))


@torch.no_grad()
def apply_adapter(model, tensors: dict[str, torch.Tensor], where: str = ADAPTER_FILE) -> None:
    """Replace the llm.* tensors and merge the lora.* update into `model`'s weights."""
    params = dict(model.named_parameters())
    for name, t in tensors.items():
        if name.startswith("llm."):
            target = params.get(name[4:])
            if target is None or target.shape != t.shape:
                raise ValueError(f"{where}: tensor {name} does not match the model "
                                 f"({'no such weight' if target is None else tuple(target.shape)})")
            target.copy_(t.to(target.dtype))
        elif not name.startswith("lora."):
            raise ValueError(f"{where}: unexpected tensor {name} (expected lora.* or llm.*)")
    try:
        merge_lora_tensors(model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}, scale=1.0)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def combine(base: dict[str, torch.Tensor] | None, new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One adapter equal to applying `base`, then `new` (both with scales folded): LoRA updates on the
    same layer concatenate along the rank; replacement tensors of `new` win and drop the base's LoRA
    update of that layer (they were trained from the merged weight, which holds it)."""
    # a replaced weight was trained from the base's merged weight: the base's update is already in it
    replaced = {n[4:].rsplit(".", 1)[0] for n in new if n.startswith("llm.") and n.endswith(".weight")}
    out = {k: v for k, v in (base or {}).items()
           if not (k.startswith("lora.") and k.split(".", 2)[2].replace("__", ".") in replaced)}
    for name, t in new.items():
        if name.startswith("llm.") or name not in out:
            out[name] = t
        else:
            dim = 0 if name.startswith("lora.A.") else 1
            out[name] = torch.cat([out[name].float(), t.float()], dim=dim)
    return out
