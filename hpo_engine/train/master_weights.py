"""fp32 master weights of a low-precision model, and the optimizer step that uses them."""
from __future__ import annotations

import torch


class MasterWeights:
    """float32 master copies of a low-precision (bf16) model's trained parameters. AdamW steps the
    masters and the results are cast back into the model's own tensors in place (the engine keeps
    using them); without this, updates of lr 1e-6 are below bf16's resolution and vanish."""

    def __init__(self, params: list[torch.Tensor]):
        self.pairs = [(p, p.detach().float().clone()) for p in params]

    @property
    def params(self) -> list[torch.Tensor]:
        return [m for _, m in self.pairs]

    def grads_to_master(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def master_to_model(self) -> None:
        for p, m in self.pairs:
            p.copy_(m)

    def state(self) -> dict:
        return {f"master.{i}": m for i, (_, m) in enumerate(self.pairs)}

    @torch.no_grad()
    def load(self, tensors: dict) -> None:
        for i, (_, m) in enumerate(self.pairs):
            m.copy_(tensors[f"master.{i}"])
        self.master_to_model()


def optimizer_step(run) -> float:
    """Clip the gradient norm, step AdamW (on the fp32 masters for a bf16 model); returns the norm."""
    params = run.trainable.parameters()
    if run.master is not None:
        run.master.grads_to_master()
        params = run.master.params
    norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.grad_clip))
    run.optimizer.step()
    if run.master is not None:
        run.master.master_to_model()
    return norm
