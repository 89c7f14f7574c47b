"""int8 weights for serving on CPU: every projection and the LM head as int8 + one scale per row.

`quantize_int8_(model)` swaps each `decoder.Linear` for an `Int8Linear` built from its (merged) weight;
embeddings and norms stay float. Two methods (QUANTIZE_CHOICES):
  - int8: weight-only; activations keep the model's dtype (`kernels.linear_int8`).
  - w8a8: at decode sizes the activations entering each projection are also rounded to int8, per block
    of 64 values, so the dot products run on AVX512-VNNI (`kernels.linear_w8a8`, llama.cpp Q8_0's
    arithmetic); prefill-sized calls take the weight-only path.
Inference only: training and LoRA work on the float model, so quantize after an adapter is merged
(`open_sst` does).
"""
import torch
from torch import nn

from hpo_engine.kernels.cpu_linear import linear_int8, linear_w8a8, quantize_int8
from hpo_engine.models.decoder import Linear

QUANTIZE_CHOICES = ("int8", "w8a8")


class Int8Linear(nn.Module):
    """y = x @ (scale[:, None] * qweight).T + bias, through `hpo_engine.kernels.linear_int8` (or
    `linear_w8a8` when `int8_activations`)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 int8_activations: bool = False):
        super().__init__()
        self.int8_activations = int8_activations
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear, int8_activations: bool = False) -> "Int8Linear":
        qweight, scale = quantize_int8(layer.weight)
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(qweight.to(layer.weight.device), scale.to(layer.weight.device), bias, int8_activations)

    def forward(self, x):
        if self.int8_activations:
            return linear_w8a8(x, self.qweight, self.scale, self.bias)
        return linear_int8(x, self.qweight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", int8_activations=True" if self.int8_activations else ""))


def quantize_int8_(model: nn.Module, int8_activations: bool = False) -> int:
    """Replace every `decoder.Linear` of `model` in place by an `Int8Linear`; returns how many.

    A tied LM head gets its own int8 copy; the embedding table it shares stays float."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, Linear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(module, int8_activations))
    return len(targets)



def quantize_model(model: nn.Module, method: str) -> int:
    """`method` by name (QUANTIZE_CHOICES); a clear error for any other."""
    if method not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {method!r}: expected one of {', '.join(QUANTIZE_CHOICES)}")
    return quantize_int8_(model, int8_activations=method == "w8a8")
