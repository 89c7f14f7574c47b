"""Small-batch linear layer on CPU: `hpo_engine.kernels.linear` vs torch's F.linear, same run.

Run: .venv/bin/python -m pytest bench/bench_linear.py --benchmark-only --benchmark-columns=median,iqr,rounds
One round = every projection of one SmolLM2-135M decode step (30 layers of q/k/v/o, gate/up/down, then
the 49,152-row lm_head: 538 MB of fp32, random weights) applied to M rows, under inference mode.
"""
import pytest
import torch
import torch.nn.functional as F

from hpo_engine.kernels import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.AVAILABLE, reason="hpo_engine._C not built")
H, I, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152
SHAPES = [(H, H), (KV, H), (KV, H), (H, H), (I, H), (I, H), (H, I)] * LAYERS + [(VOCAB, H)]


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def weights(request):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, k, generator=g).to(request.param) for n, k in SHAPES]


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("impl", ["torch", "hpo"])
def test_decode_step_projections(benchmark, weights, rows, impl):
    dtype = weights[0].dtype
    if impl == "hpo" and rows > cpu_linear.MAX_ROWS[dtype]:
        pytest.skip(f"{rows} rows of {dtype} go to F.linear")
    benchmark.group = f"{str(dtype)[6:]}-M{rows}"
    fn = F.linear if impl == "torch" else cpu_linear.linear
    xs = {k: torch.randn(rows, k).to(dtype) for k in (H, I)}

    def step():
        with torch.inference_mode():
            for w in weights:
                fn(xs[w.shape[1]], w)
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    benchmark.extra_info["weight_bytes"] = sum(w.numel() * w.element_size() for w in weights)
