"""Small-batch linear layer on CPU (csrc/linear_cpu.cpp): y = x @ weight.T + bias.

Reference: `torch.nn.functional.linear`. Shapes: x [M, K] (last dim contiguous, any row stride),
weight [N, K] contiguous, bias [N] or None -> y [M, N]; float32 or bfloat16, all of one dtype.
Taken when M <= MAX_ROWS[dtype] and no autograd is recording (inference, rollouts); anything else,
training forwards included, goes to F.linear. Each weight row is read once per call, which is what a
decode step needs: torch's GEMM reads weights at a fraction of memory bandwidth at these M
(bench/RESULTS.md, "Small-batch linear"). A row's output does not depend on the other rows of x
(bitwise).
"""
import torch
import torch.nn.functional as F

try:
    from hpo_engine import _C
except Exception:  # noqa: BLE001 - extension not built: F.linear everywhere
    _C = None

_LINEAR = getattr(_C, "linear_small_cpu", None)
AVAILABLE = _LINEAR is not None
# Rows up to which the kernel beats torch (bench/RESULTS.md, "Small-batch linear"). fp32: decode batches
# and short turns; prefill-sized GEMMs are left to torch. bf16: torch's GEMM uses the CPU's bf16 dot
# instructions, which make it compute faster from 6 rows on; this kernel converts to fp32 and FMAs.
MAX_ROWS = {torch.float32: 64, torch.bfloat16: 5}


def supports_linear(x, weight, bias=None) -> bool:
    """Whether `linear` takes the C++ path for these tensors."""
    return (_LINEAR is not None and not torch.is_grad_enabled() and x.dim() == 2
            and x.shape[0] <= MAX_ROWS.get(x.dtype, -1) and weight.dtype == x.dtype and x.is_cpu and weight.is_cpu
            and weight.dim() == 2 and weight.is_contiguous() and x.shape[1] == weight.shape[1]
            and x.stride(1) == 1 and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()
                                                       and bias.shape == weight.shape[:1])))


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias), through the C++ small-batch kernel when `supports_linear`."""
    if not supports_linear(x, weight, bias):
        return F.linear(x, weight, bias)
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype)
    if M:
        _LINEAR(x.data_ptr(), x.stride(0), weight.data_ptr(), 0 if bias is None else bias.data_ptr(),
                y.data_ptr(), N, M, N, K, x.dtype == torch.bfloat16, torch.get_num_threads())
    return y
