"""What an update changes: some or all LLM weights, LoRA adapters, the speech projector.

    train_llm = all      every LLM weight (the paper's setting)
                none     no LLM weight (only the projector of an SST checkpoint)
                lora     LoRA adapters on the LLM's linear layers (hpo_engine.models.lora)
                last:N   the last N decoder layers and the final norm

The engine runs the very same modules (LoRA through hooks), so rollouts see every update at once.
Saved tensors: "llm.<name>" for the trained LLM weights, "projector.<name>", "lora.<A|B>.<module>".
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from hpo_engine.models.lora import LoRA


@dataclass
class Trainable:
    model: nn.Module
    projector: nn.Module | None = None       # speech rows (encoder frames) -> LLM embeddings
    lora: LoRA | None = None

    def parameters(self) -> list[torch.Tensor]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        for extra in (self.projector, self.lora):
            if extra is not None:
                params += [p for p in extra.parameters() if p.requires_grad]
        return params

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def named_llm(self) -> dict[str, torch.Tensor]:
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if getattr(self.model.config, "tie_word_embeddings", False):
            named.pop("lm_head.weight", None)      # tied: saved once, as the embedding
        return named

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"llm.{n}": p for n, p in self.named_llm().items()}
        if self.projector is not None:
            out.update({f"projector.{n}": p for n, p in self.projector.state_dict().items()})
        if self.lora is not None:
            out.update({f"lora.{n}": p for n, p in self.lora.tensors().items()})
        return {k: v.detach().contiguous().clone() for k, v in out.items()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        expected = set(self.state())
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ValueError(f"{where} does not match what this config trains (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}): was it written with another model.train_llm?")
        llm = dict(self.model.named_parameters())
        for name, t in tensors.items():
            kind, rest = name.split(".", 1)
            if kind == "llm":
                llm[rest].copy_(t)
        if self.projector is not None:
            self.projector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("projector.")})
        if self.lora is not None:
            self.lora.load_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})

    def embed_speech(self, rows: torch.Tensor) -> torch.Tensor:
        return self.projector(rows)


def select(model: nn.Module, train_llm: str, projector: nn.Module | None = None, train_projector: bool = True,
           lora_rank: int = 16, lora_alpha: float = 32.0, lora_targets=None, seed: int = 0) -> Trainable:
    """Mark what trains (requires_grad) and attach LoRA when asked; errors when nothing would train."""
    model.requires_grad_(train_llm == "all")
    if train_llm.startswith("last:"):
        n = int(train_llm[5:])
        layers = model.model.layers
        if not 1 <= n <= len(layers):
            raise ValueError(f"model.train_llm: last:{n} but the model has {len(layers)} layers")
        for layer in layers[-n:]:
            layer.requires_grad_(True)
        model.model.norm.requires_grad_(True)
    lora = None
    if train_llm == "lora":
        kwargs = {"targets": tuple(lora_targets)} if lora_targets else {}
        lora = LoRA(model, lora_rank, lora_alpha, generator=torch.Generator().manual_seed(seed), **kwargs)
    if projector is not None:
        projector.requires_grad_(train_projector)
    trainable = Trainable(model, projector, lora)
    if not trainable.parameters():
        raise ValueError("nothing to train: model.train_llm is 'none' and there is no trainable projector")
    return trainable


def frozen_copy(module: nn.Module | None) -> nn.Module | None:
    """The reference policy's copy of a module (the KL anchor): same values, never trained."""
    return None if module is None else copy.deepcopy(module).requires_grad_(False)
