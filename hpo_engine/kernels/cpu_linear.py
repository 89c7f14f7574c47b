"""Linear layers of CPU inference: y = x @ weight.T + bias, float or weight-only int8.

Reference: `torch.nn.functional.linear` (int8: on the dequantized weight, `linear_int8_ref`). Shapes:
x [M, K] (last dim contiguous, any row stride), weight [N, K] contiguous, bias [N] or None -> y [M, N].
Only inference takes these paths; whenever autograd records (training forwards) the call is F.linear.

Float weights (x, weight, bias of one dtype, float32 or bfloat16), by rows M:
  - M <= MAX_ROWS[dtype]: the C++ small-batch kernel (csrc/linear_cpu.cpp). Each weight row is read
    once per call, which is what a decode step needs: torch's GEMM reads weights at a fraction of
    memory bandwidth at these M. A row's output does not depend on the other rows of x (bitwise).
  - larger float32 M (prefill, long user turns): oneDNN's GEMM (`torch.ops.mkldnn._linear_pointwise`).
    torch's own float32 GEMM is MKL's, which on AMD CPUs runs 2-4x below oneDNN's
    (bench/RESULTS.md "Prefill GEMM"). bfloat16 already reaches oneDNN through F.linear.
Weight-only int8 (`quantize_int8`: symmetric, one float32 scale per output row): the C++ kernel widens
int8 to float in registers up to MAX_INT8_ROWS rows (a decode step reads a quarter of the fp32 bytes);
above (prefill), the weight is dequantized to x's dtype for the call and takes the float path.
"""
import torch
import torch.nn.functional as F

try:
    from hpo_engine import _C
except Exception:  # noqa: BLE001 - extension not built: F.linear everywhere
    _C = None

_LINEAR = getattr(_C, "linear_small_cpu", None)
_LINEAR_INT8 = getattr(_C, "linear_int8_cpu", None)
_LINEAR_W8A8 = getattr(_C, "linear_w8a8_cpu", None)
AVAILABLE = _LINEAR is not None
# Rows up to which the kernel beats torch (bench/RESULTS.md, "Small-batch linear"). fp32: decode batches
# and short turns; prefill-sized GEMMs go to oneDNN. bf16: torch's GEMM uses the CPU's bf16 dot
# instructions, which make it compute faster from 6 rows on; this kernel converts to fp32 and FMAs.
MAX_ROWS = {torch.float32: 64, torch.bfloat16: 5}
MAX_INT8_ROWS = 64
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def supports_linear(x, weight, bias=None) -> bool:
    """Whether `linear` takes the C++ path for these tensors."""
    return (_LINEAR is not None and not torch.is_grad_enabled() and x.dim() == 2
            and x.shape[0] <= MAX_ROWS.get(x.dtype, -1) and weight.dtype == x.dtype and x.is_cpu and weight.is_cpu
            and weight.dim() == 2 and weight.is_contiguous() and x.shape[1] == weight.shape[1]
            and x.stride(1) == 1 and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()
                                                       and bias.shape == weight.shape[:1])))


def supports_onednn(x, weight, bias=None) -> bool:
    """Whether `linear` takes oneDNN's float32 GEMM for these tensors (inference, more than MAX_ROWS)."""
    return (ONEDNN and not torch.is_grad_enabled() and x.dim() == 2 and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.is_cpu and weight.is_cpu and weight.dim() == 2
            and x.shape[0] > MAX_ROWS[torch.float32] and x.shape[1] == weight.shape[1]
            and (bias is None or (bias.dtype == torch.float32 and bias.shape == weight.shape[:1])))


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias): the C++ small-batch kernel, oneDNN for larger float32 inference, else torch."""
    if supports_linear(x, weight, bias):
        M, K = x.shape
        N = weight.shape[0]
        y = torch.empty((M, N), dtype=x.dtype)
        if M:
            _LINEAR(x.data_ptr(), x.stride(0), weight.data_ptr(), 0 if bias is None else bias.data_ptr(),
                    y.data_ptr(), N, M, N, K, x.dtype == torch.bfloat16, torch.get_num_threads())
        return y
    if supports_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")
    return F.linear(x, weight, bias)


# -- weight-only int8 --------------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float -> (qweight int8 [N, K], scale float32 [N]), weight ~= scale[:, None] * qweight.

    Symmetric per output row: scale = max|row| / 127, values rounded to nearest (a zero row: scale 1)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    qweight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
    return qweight, scale.contiguous()


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (qweight.float() * scale[:, None]).to(dtype)


def linear_int8_ref(x, qweight, scale, bias=None):
    """The reference: F.linear on the dequantized weight, in x's dtype."""
    return F.linear(x, dequantize_int8(qweight, scale, x.dtype), bias)


def supports_linear_int8(x, qweight, scale, bias=None) -> bool:
    """Whether `linear_int8` takes the C++ int8 kernel for these tensors."""
    return (_LINEAR_INT8 is not None and not torch.is_grad_enabled() and x.dim() == 2
            and x.dtype in (torch.float32, torch.bfloat16) and x.shape[0] <= MAX_INT8_ROWS and x.is_cpu
            and qweight.dtype == torch.int8 and qweight.dim() == 2 and qweight.is_contiguous()
            and x.shape[1] == qweight.shape[1] and x.stride(1) == 1
            and scale.dtype == torch.float32 and scale.is_contiguous() and scale.shape == qweight.shape[:1]
            and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous() and bias.shape == scale.shape)))


def linear_int8(x, qweight, scale, bias=None):
    """x @ (scale[:, None] * qweight).T + bias in x's dtype (float32 or bfloat16)."""
    if not supports_linear_int8(x, qweight, scale, bias):
        return linear(x, dequantize_int8(qweight, scale, x.dtype), bias)
    return _int8_kernel(_LINEAR_INT8, x, qweight, scale, bias)


def _int8_kernel(kernel, x, qweight, scale, bias, *flags):
    """y [M, N] = kernel(x [M, K] rows at stride x.stride(0), int8 weight [N, K], scale [N], bias [N])."""
    M, K = x.shape
    N = qweight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype)
    if M:
        kernel(x.data_ptr(), x.stride(0), qweight.data_ptr(), scale.data_ptr(),
               0 if bias is None else bias.data_ptr(), y.data_ptr(), N, M, N, K,
               x.dtype == torch.bfloat16, *flags, torch.get_num_threads())
    return y


# -- int8 weights and int8 activations (W8A8) ---------------------------------------------------------
W8A8_BLOCK = 64         # activations share one scale per 64 consecutive values of a row
W8A8_VNNI = _LINEAR_W8A8 is not None and _C.linear_w8a8_has_vnni()   # else the kernel's plain loop


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (q int8 [M, K], scale float32 [M, ceil(K / 64)]), x ~= q * scale of its block.

    scale = max|block| / 127 (an all-zero block: 1), q = round-half-even(x / scale), as the kernel does."""
    M, K = x.shape
    nb = -(-K // W8A8_BLOCK)
    xf = torch.zeros(M, nb * W8A8_BLOCK, dtype=torch.float32)
    xf[:, :K] = x.float()
    blocks = xf.view(M, nb, W8A8_BLOCK)
    amax = blocks.abs().amax(dim=2)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(blocks / scale[:, :, None]).clamp_(-127, 127).to(torch.int8)
    return q.view(M, -1)[:, :K].contiguous(), scale


def linear_w8a8_ref(x, qweight, scale, bias=None):
    """The reference: activations quantized per 64-block (`quantize_activations`), every block's dot
    product exact (int64), y = scale[n] * sum_b xscale[m, b] * dot[m, n, b] + bias in float64, then x's dtype."""
    M, K = x.shape
    xq, xscale = quantize_activations(x)
    nb = xscale.shape[1]
    pad = nb * W8A8_BLOCK - K
    xb = F.pad(xq.long(), (0, pad)).view(M, nb, W8A8_BLOCK)
    wb = F.pad(qweight.long(), (0, pad)).view(-1, nb, W8A8_BLOCK)
    dots = torch.einsum("mbk,nbk->mnb", xb, wb).double()
    y = (dots * xscale.double()[:, None, :]).sum(dim=2) * scale.double()[None, :]
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)


def supports_linear_w8a8(x, qweight, scale, bias=None) -> bool:
    """Whether `linear_w8a8` takes the C++ kernel (the same conditions as the weight-only int8 kernel)."""
    return _LINEAR_W8A8 is not None and supports_linear_int8(x, qweight, scale, bias)


def linear_w8a8(x, qweight, scale, bias=None):
    """x @ (scale[:, None] * qweight).T + bias with x quantized per 64-block to int8, in x's dtype.

    Decode-sized M (<= MAX_INT8_ROWS): the C++ kernel (csrc/linear_w8a8_cpu.cpp, AVX512-VNNI where the
    CPU has it). Larger M (prefill) and autograd: the weight-only path on float activations, where a GEMM
    is compute-bound anyway and activation rounding would buy nothing."""
    if not supports_linear_w8a8(x, qweight, scale, bias):
        return linear_int8(x, qweight, scale, bias)
    return _int8_kernel(_LINEAR_W8A8, x, qweight, scale, bias, W8A8_VNNI)
