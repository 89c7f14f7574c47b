"""RMSNorm and rotary embedding of CPU inference (csrc/norm_rope_cpu.cpp), beside their references.

rms_norm: x [T, H] (last dim contiguous, any row stride) or contiguous [..., H], weight [H] -> x's shape
rope:     x [T, heads, D] contiguous, cos/sin [T, D] contiguous -> [T, heads, D]; the C++ path rotates x
          in place and returns it (inference only: the caller's q / k are fresh projections)
float32 or bfloat16, one dtype. The C++ path runs when no autograd records and the tensors are CPU;
anything else (training, other devices or layouts) runs the reference, which is the model's math.
"""
import torch

try:
    from hpo_engine import _C
except Exception:  # noqa: BLE001 - extension not built: the references everywhere
    _C = None

_RMS_NORM = getattr(_C, "rms_norm_cpu", None)
_ROPE = getattr(_C, "rope_cpu", None)
DTYPES = (torch.float32, torch.bfloat16)


def rms_norm_ref(x, weight, eps):
    """Hugging Face's LlamaRMSNorm: float32 math, rounded to x's dtype before the weight."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rope_ref(x, cos, sin):
    """x [T, H, D]; cos/sin [T, D] (halves repeated, as Hugging Face's rotate_half layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _fast(*tensors) -> bool:
    return (not torch.is_grad_enabled() and all(t.is_cpu and t.dtype == tensors[0].dtype for t in tensors)
            and tensors[0].dtype in DTYPES)


def rms_norm(x, weight, eps):
    if x.dim() > 2 and x.is_contiguous():      # Qwen3's per-head norms: [T, heads, D] as rows of D
        return rms_norm(x.view(-1, x.shape[-1]), weight, eps).view(x.shape)
    if (_RMS_NORM is not None and _fast(x, weight) and x.dim() == 2 and x.stride(1) == 1
            and weight.is_contiguous() and weight.shape == x.shape[1:]):
        T, H = x.shape
        y = torch.empty((T, H), dtype=x.dtype)
        if T:
            _RMS_NORM(x.data_ptr(), x.stride(0), weight.data_ptr(), y.data_ptr(), T, H, eps,
                      x.dtype == torch.bfloat16, torch.get_num_threads())
        return y
    return rms_norm_ref(x, weight, eps)


def rope(x, cos, sin):
    if (_ROPE is not None and _fast(x, cos, sin) and x.dim() == 3 and x.is_contiguous() and x.shape[-1] % 2 == 0
            and cos.is_contiguous() and sin.is_contiguous() and cos.shape == sin.shape == (x.shape[0], x.shape[2])):
        T, heads, D = x.shape
        if T:
            _ROPE(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), T, heads, D, x.dtype == torch.bfloat16,
                  torch.get_num_threads())
        return x
    return rope_ref(x, cos, sin)
