"""CPU attention benchmarks (pytest-benchmark): the paged CPU path vs torch SDPA on the same KV already
contiguous, and vs gather-then-SDPA (what vLLM's CPU backend and nano-vllm's SDPA fallback do).

Run:   .venv/bin/python -m pytest -q bench/bench_attention.py --benchmark-only \
           --benchmark-columns=median,iqr,rounds --benchmark-json=/tmp/attn.json
Ratios: .venv/bin/python bench/bench_attention.py /tmp/attn.json   (same-run medians, per case)
Interleaved: .venv/bin/python bench/bench_attention.py --interleaved [--seconds S]
    the four implementations called in rotation, round after round, medians per implementation: the
    ratios stay fair when the machine's load drifts (pytest-benchmark times one implementation after
    the other, so a load change between them lands in the ratio).
Threads: BENCH_THREADS=N sets torch.set_num_threads(N) for every implementation (default: torch's).

Cases: head shapes SmolLM2 (9 q / 3 kv heads, d 64) and Qwen3-4B (32 / 8, d 128), fp32, block 32,
pages drawn by randperm from a pool 3x larger; decode (1 new token) and chunk extension (14 new
tokens) at batch 16 and 1, context 2048 (plus batch-1 decode at 256 for per-call overhead).
Implementations:
  paged        hpo_engine.kernels.paged_attention (dispatch -> C++ path on CPU), the public entry point
  sdpa_contig  F.scaled_dot_product_attention on [B, H, L, D] contiguous K/V (no paging at all)
  gather_sdpa  one batched index_select of the pages, then the same SDPA call
  torch_path   the torch backend (per-sequence gather + SDPA, handles ragged batches)
"""
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

def _apply_threads():
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))


@pytest.fixture(autouse=True)
def _bench_threads():
    _apply_threads()   # after bench/conftest.py's session fixture (2 threads)

SHAPES = {"smollm2": (9, 3, 64), "qwen3_4b": (32, 8, 128)}
CASES = [  # (batch, new tokens, context incl. new tokens)
    (16, 1, 2048), (1, 1, 2048), (1, 1, 256), (16, 14, 2048), (1, 14, 2048),
]
BLOCK = 32
IMPLS = ["paged", "sdpa_contig", "gather_sdpa", "torch_path"]


def _setup(shape, batch, new, ctx, seed=0):
    hq, hkv, d = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    pages_per_seq = ctx // BLOCK
    pool = 3 * batch * pages_per_seq
    perm = torch.randperm(pool, generator=g)[: batch * pages_per_seq]
    table = perm.view(batch, pages_per_seq).to(torch.int32).contiguous()
    k_cache = torch.randn(pool, BLOCK, hkv, d, generator=g)
    v_cache = torch.randn(pool, BLOCK, hkv, d, generator=g)
    q = torch.randn(batch * new, hq, d, generator=g)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32)
    cu = torch.arange(0, batch * new + 1, new, dtype=torch.int32)
    # the same KV laid out contiguously, [B, Hkv, L, D] (what a dense cache would hold)
    k_dense = k_cache[table.long()].flatten(1, 2).transpose(1, 2).contiguous()
    v_dense = v_cache[table.long()].flatten(1, 2).transpose(1, 2).contiguous()
    mask = None
    if new > 1:  # bottom-right causal
        mask = torch.arange(ctx)[None, :] <= torch.arange(new)[:, None] + (ctx - new)
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, table=table, seq_lens=seq_lens, cu=cu,
                k_dense=k_dense, v_dense=v_dense, mask=mask, batch=batch, new=new, hq=hq, hkv=hkv, d=d,
                out=torch.empty_like(q))


def _runner(impl, s):
    from hpo_engine.kernels import paged_attention, paged_attention_torch
    q4 = s["q"].view(s["batch"], s["new"], s["hq"], s["d"]).transpose(1, 2)   # [B, Hq, n, D]
    if impl == "paged":
        return lambda: paged_attention(s["q"], s["k_cache"], s["v_cache"], s["table"], s["seq_lens"], s["cu"],
                                       out=s["out"])
    if impl == "sdpa_contig":
        return lambda: F.scaled_dot_product_attention(q4, s["k_dense"], s["v_dense"], attn_mask=s["mask"],
                                                      enable_gqa=True)
    if impl == "gather_sdpa":
        def gather_sdpa():
            idx = s["table"].long()
            k = s["k_cache"][idx].flatten(1, 2).transpose(1, 2)   # [B, Hkv, L, D]
            v = s["v_cache"][idx].flatten(1, 2).transpose(1, 2)
            return F.scaled_dot_product_attention(q4, k, v, attn_mask=s["mask"], enable_gqa=True)
        return gather_sdpa
    return lambda: paged_attention_torch(s["q"], s["k_cache"], s["v_cache"], s["table"], s["seq_lens"], s["cu"],
                                         out=s["out"])


def _case_id(shape, case):
    batch, new, ctx = case
    kind = "decode" if new == 1 else f"extend{new}"
    return f"{shape}-{kind}-b{batch}-ctx{ctx}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,case", [(sh, c) for sh in SHAPES for c in CASES],
                         ids=[_case_id(sh, c) for sh in SHAPES for c in CASES])
def test_attention(benchmark, shape, case, impl):
    s = _setup(shape, *case)
    fn = _runner(impl, s)
    benchmark.group = _case_id(shape, case)
    benchmark.extra_info.update(threads=torch.get_num_threads(), shape=shape, impl=impl)
    if impl in ("paged", "torch_path"):   # both write s["out"]; check against dense SDPA once
        fn()
        ref = _runner("sdpa_contig", s)().transpose(1, 2).reshape_as(s["q"])
        assert torch.allclose(s["out"], ref, atol=1e-4, rtol=1e-4)
    benchmark.pedantic(fn, rounds=_rounds(shape, case), warmup_rounds=2, iterations=1)


def _rounds(shape, case):
    batch, new, _ = case
    heavy = batch * new * SHAPES[shape][0] * SHAPES[shape][2]
    return 15 if heavy >= 16 * 14 * 32 * 128 else 30 if heavy >= 16 * 9 * 64 else 200


def summarize(path):
    """Print paged-vs-baseline median ratios (>1: paged is faster) per case from a benchmark json."""
    data = json.load(open(path))
    cases = {}
    for b in data["benchmarks"]:
        cases.setdefault(b["group"], {})[b["extra_info"]["impl"]] = (b["stats"]["median"], b["stats"]["rounds"])
    print(f"{'case':34s} {'paged ms':>9s} {'sdpa_contig/paged':>18s} {'gather_sdpa/paged':>18s} "
          f"{'torch_path/paged':>17s} rounds")
    for group, r in cases.items():
        p = r["paged"][0]
        print(f"{group:34s} {p * 1e3:9.3f} {r['sdpa_contig'][0] / p:18.2f} {r['gather_sdpa'][0] / p:18.2f} "
              f"{r['torch_path'][0] / p:17.2f} {r['paged'][1]}")


def interleaved(seconds_per_case=4.0):
    import time
    _apply_threads()
    print(f"threads {torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'case':34s} {'paged ms':>9s} {'sdpa_contig/paged':>18s} {'gather_sdpa/paged':>18s} "
          f"{'torch_path/paged':>17s} rounds")
    for shape in SHAPES:
        for case in CASES:
            s = _setup(shape, *case)
            fns = {impl: _runner(impl, s) for impl in IMPLS}
            for fn in fns.values():
                fn()
                fn()
            times = {impl: [] for impl in IMPLS}
            start = time.perf_counter()
            rounds = 0
            while rounds < 5 or (time.perf_counter() - start < seconds_per_case and rounds < 2000):
                order = IMPLS[rounds % len(IMPLS):] + IMPLS[: rounds % len(IMPLS)]
                for impl in order:
                    t = time.perf_counter()
                    fns[impl]()
                    times[impl].append(time.perf_counter() - t)
                rounds += 1
            med = {impl: sorted(v)[len(v) // 2] for impl, v in times.items()}
            p = med["paged"]
            print(f"{_case_id(shape, case):34s} {p * 1e3:9.3f} {med['sdpa_contig'] / p:18.2f} "
                  f"{med['gather_sdpa'] / p:18.2f} {med['torch_path'] / p:17.2f} {rounds}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "--interleaved":
        interleaved(float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--seconds" else 4.0)
    else:
        summarize(sys.argv[1])
