"""LoRA adapters on a CausalLM's linear layers, held outside the model's own state dict.

    y = x W^T (+ b) + (alpha / r) * (x A^T) B^T      A [r, in] Kaiming-uniform, B [out, r] zeros

They are attached with forward hooks, so the engine (paged decode) and the trainer (packed full
sequences) run the same adapted model through their unchanged code; `merge` folds the update into W
(W += alpha / r * B A) for serving at no extra cost. A fresh adapter leaves the model's output unchanged.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _key(module_name: str) -> str:
    return module_name.replace(".", "__")      # ParameterDict keys may not hold dots


class LoRA(nn.Module):
    def __init__(self, model: nn.Module, rank: int = 16, alpha: float = 32.0, targets=TARGETS,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        unknown = set(targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {sorted(unknown)} (known: {', '.join(TARGETS)})")
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.enabled = True
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.modules_by_key: dict[str, nn.Linear] = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                w = module.weight
                a = torch.empty(rank, w.shape[1], dtype=torch.float32)
                bound = 1 / math.sqrt(w.shape[1])       # nn.Linear's init (kaiming_uniform, a = sqrt(5))
                a.uniform_(-bound, bound, generator=generator)
                self.A[_key(name)] = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
                self.B[_key(name)] = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
                self.modules_by_key[_key(name)] = module
        if not self.modules_by_key:
            raise ValueError(f"no linear layer named {', '.join(targets)} in the model")
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in self.modules_by_key.items()]

    def _hook(self, key: str):
        def add_update(module, inputs, output):
            if not self.enabled:
                return output
            return output + self.scale * F.linear(F.linear(inputs[0], self.A[key]), self.B[key])
        return add_update

    @contextmanager
    def disabled(self):
        """The base model, for the duration (HPO's frozen KL reference without a second copy)."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def detach(self) -> None:
        """Remove the hooks (the model computes without the adapter again)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def merge(self) -> None:
        """W += alpha / r * B A in every adapted layer, then detach: same outputs, no hook cost."""
        for key, module in self.modules_by_key.items():
            delta = self.scale * (self.B[key].float() @ self.A[key].float())
            module.weight.add_(delta.to(module.weight.dtype))
        self.detach()

    def scaled_tensors(self) -> dict[str, torch.Tensor]:
        """The update as {"A.<module>", "B.<module>"} with the scale folded into B (merge at scale 1);
        two such adapters of any ranks add up by concatenating along the rank."""
        out = {f"A.{k}": a.detach() for k, a in self.A.items()}
        out.update({f"B.{k}": (self.scale * b.detach()) for k, b in self.B.items()})
        return out

    @torch.no_grad()
    def load_scaled_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from `scaled_tensors()` of an adapter of the same rank and layers."""
        self.load_tensors({k: v / self.scale if k.startswith("B.") else v for k, v in tensors.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """{"A.<module>", "B.<module>"} -> tensor, module names with "__" for dots."""
        return {f"{n}.{k}": p.detach() for n, d in (("A", self.A), ("B", self.B)) for k, p in d.items()}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        mine = self.tensors()
        missing, unexpected = sorted(set(mine) - set(tensors)), sorted(set(tensors) - set(mine))
        if missing or unexpected:
            raise ValueError(f"LoRA tensors do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for name, t in tensors.items():
            if t.shape != mine[name].shape:
                raise ValueError(f"LoRA tensor {name} has shape {tuple(t.shape)}, expected {tuple(mine[name].shape)}")
            mine[name].copy_(t)


def merge_lora_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], scale: float = 1.0) -> int:
    """W += scale * B A for saved adapter tensors {"A.<module>": [r, in], "B.<module>": [out, r]};
    returns the number of layers changed. Errors name a module the model lacks or a mis-shaped tensor."""
    modules = dict(model.named_modules())
    keys = sorted({name.split(".", 1)[1] for name in tensors if name.startswith("A.")})
    for key in keys:
        name = key.replace("__", ".")
        if name not in modules or f"B.{key}" not in tensors:
            raise ValueError(f"LoRA adapter names {name!r}, which the model lacks (or its B tensor is missing)")
        a, b = tensors[f"A.{key}"].float(), tensors[f"B.{key}"].float()
        w = modules[name].weight
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA tensors for {name} have shapes {tuple(a.shape)} / {tuple(b.shape)}, "
                             f"the layer's weight {tuple(w.shape)}")
        with torch.no_grad():
            w.add_((scale * (b @ a)).to(w.dtype))
    return len(keys)
