"""Triton kernels against the reference under the CPU interpreter (small shapes; `TRITON_INTERPRET=1`).

Triton chooses interpreter or compiler when a jit function is defined, its own standard library
included, so the checks run in a child pytest whose environment has the variable from the start:
the parent's single test spawns it on this file and reports its output on failure.
On a CUDA machine, bench/gpu_check.py runs the compiled kernels against the same reference.
"""
import os
import subprocess
import sys

import pytest
import torch

from hpo_engine.kernels.reference import paged_attention_ref, store_kv_ref
from test_kernels_helpers import MIXED, paged_batch, rel_err, tolerance

pytestmark = pytest.mark.slow          # make test-fast leaves these out

pytest.importorskip("triton")
IN_CHILD = os.environ.get("_HPO_TRITON_CHILD") == "1"

if not IN_CHILD:
    def test_triton_kernels_under_interpreter():
        env = dict(os.environ, TRITON_INTERPRET="1", _HPO_TRITON_CHILD="1")
        env.pop("HPO_ATTN_BACKEND", None)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-3000:]
else:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from hpo_engine.kernels import triton_paged_attention as attn
    from hpo_engine.kernels import triton_store_kv as store



    # (Hq, Hkv, D, block, dtype, splits): GQA 1:1/3:1/4:1/5:1, D 64/80/128, block 16/32, fp32/bf16,
    # one launch and split-KV
    CASES = [
        (4, 4, 64, 16, torch.float32, 1),
        (6, 2, 80, 32, torch.bfloat16, 1),
        (8, 2, 128, 16, torch.float32, 3),
        (5, 1, 64, 32, torch.bfloat16, 2),
        (9, 3, 64, 16, torch.float16, 1),
        (12, 4, 96, 48, torch.bfloat16, 1),
    ]


    @pytest.mark.parametrize("hq,hkv,d,bs,dtype,splits", CASES, ids=lambda v: str(v).replace("torch.", ""))
    def test_triton_attention_matches_reference(hq, hkv, d, bs, dtype, splits):
        g = torch.Generator().manual_seed(hq * 100 + d)
        q, kc, vc, table, lens, cu = paged_batch(MIXED, hq, hkv, d, bs, dtype, g)
        ref = paged_attention_ref(q, kc, vc, table, lens, cu)
        out = torch.full_like(q, float("nan"))
        attn.paged_attention_triton(q, kc, vc, table, lens, cu, out=out, num_splits=splits)
        assert not out.isnan().any()
        assert rel_err(out, ref) < tolerance(dtype)


    def test_triton_full_mixed_batch_via_dispatch(monkeypatch):
        """The issue's batch (1,1328),(5,18),(129,463),(14,14) through the public entry point."""
        import hpo_engine.kernels as K
        monkeypatch.setenv("HPO_ATTN_BACKEND", "triton")
        g = torch.Generator().manual_seed(8)
        q, kc, vc, table, lens, cu = paged_batch(MIXED, 12, 3, 128, 32, torch.float32, g)
        ref = paged_attention_ref(q, kc, vc, table, lens, cu)
        out = torch.full_like(q, float("nan"))
        assert K.paged_attention(q, kc, vc, table, lens, cu, out=out) is out
        assert rel_err(out, ref) < 1e-5
        key, value = torch.randn(3, 3, 128, generator=g), torch.randn(3, 3, 128, generator=g)
        slots = torch.tensor([5, -1, 77])
        k_ref, v_ref = kc.clone(), vc.clone()
        store_kv_ref(key, value, k_ref, v_ref, slots)
        K.store_kv(key, value, kc, vc, slots)
        assert torch.equal(kc, k_ref) and torch.equal(vc, v_ref)

    def test_triton_decode_split_kv_and_empty_sequence():
        g = torch.Generator().manual_seed(21)
        seqs = [(1, 700), (0, 20), (1, 3)]
        q, kc, vc, table, lens, cu = paged_batch(seqs, 8, 2, 64, 16, torch.float32, g)
        ref = paged_attention_ref(q, kc, vc, table, lens, cu, scale=0.2)
        for splits in (None, 4):                 # None: chosen from shapes (splits here: few programs)
            out = torch.full_like(q, float("nan"))
            attn.paged_attention_triton(q, kc, vc, table, lens, cu, scale=0.2, out=out, num_splits=splits)
            assert rel_err(out, ref) < 1e-5


    def test_launch_choice_uses_shapes_only():
        cpu = torch.device("cpu")
        # many decode sequences: one launch, short tiles
        bm, bq, tile, splits, _ = attn.choose_launch(64, 64, 32, 8, 128, torch.bfloat16, 256, 16, cpu)
        assert (bm, bq, splits) == (16, 4, 1)
        # one long decode: split-KV
        assert attn.choose_launch(1, 1, 32, 8, 128, torch.bfloat16, 2048, 16, cpu)[3] > 1
        # short contexts are never split below 256 keys per slice
        assert attn.choose_launch(1, 1, 32, 8, 128, torch.bfloat16, 8, 16, cpu)[3] == 1
        # prefill-heavy batches take taller tiles
        assert attn.choose_launch(500, 2, 9, 3, 64, torch.bfloat16, 64, 32, cpu)[0] == 64


    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_triton_store_kv_exact(dtype):
        g = torch.Generator().manual_seed(5)
        k_cache = torch.randn(10, 32, 3, 80, generator=g).to(dtype)
        v_cache = torch.randn(10, 32, 3, 80, generator=g).to(dtype)
        key = torch.randn(17, 3, 80, generator=g).to(dtype)
        value = torch.randn(17, 3, 80, generator=g).to(dtype)
        slots = torch.randperm(320, generator=g)[:17]
        slots[[1, 16]] = -1
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        store_kv_ref(key, value, k_ref, v_ref, slots)
        store.store_kv_triton(key, value, k_cache, v_cache, slots)
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


if not IN_CHILD:
    @pytest.mark.parametrize("hq,hkv,d,dtype,tokens,seqs", [
        (32, 8, 128, torch.bfloat16, 64, 64),     # decode, Qwen3-4B shape
        (9, 3, 64, torch.bfloat16, 224, 16),      # chunk extension: tall tiles
        (15, 3, 80, torch.float16, 1, 1),         # padded head_dim, split-KV
        (8, 2, 128, torch.float32, 300, 2),       # fp32 keeps short tiles
    ])
    def test_triton_compiles_for_sm90_without_spills(hq, hkv, d, dtype, tokens, seqs):
        """The real compiler (not the interpreter) on the launch the wrapper would choose: Triton's wheel
        carries ptxas, so sm_90 code builds without a GPU. Register spills would cost bandwidth."""
        import inspect
        import pathlib
        import subprocess
        import tempfile

        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from hpo_engine.kernels import triton_paged_attention as attn
        if not hasattr(attn._paged_attention_kernel, "arg_names"):
            pytest.skip("kernels were defined under the interpreter")
        block_m, block_q, tile_n, splits, warps = attn.choose_launch(
            tokens, seqs, hq, hkv, d, dtype, 4096 // 16, 16, torch.device("cpu"), sm_count=132)   # an H100
        elem = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
        pointers = {"q_ptr": elem, "k_cache_ptr": elem, "v_cache_ptr": elem, "out_ptr": elem, "partial_ptr": "fp32",
                    "lse_ptr": "fp32", "block_table_ptr": "i32", "seq_lens_ptr": "i32", "cu_seqlens_q_ptr": "i32"}
        names = inspect.signature(attn._paged_attention_kernel.fn).parameters
        signature = {n: f"*{pointers[n]}" if n in pointers else "fp32" if n == "scale_log2"
                     else "constexpr" if n.isupper() else "i32" for n in names}
        constants = dict(NUM_Q_HEADS=hq, GROUP=hq // hkv, HEAD_DIM=d, HEAD_DIM_PAD=triton.next_power_of_2(d),
                         BLOCK_SIZE=16, BLOCK_M=block_m, BLOCK_Q=block_q, TILE_N=tile_n, NUM_SPLITS=splits,
                         DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32", UPCAST_DOT=False)
        # what a launch specialises on these layouts: 16-divisible pointers and strides
        divisible = {(list(names).index(n),): [["tt.divisibility", 16]] for n in names
                     if n.endswith("_ptr") or n.startswith("stride")}
        try:
            kernel = triton.compile(ASTSource(fn=attn._paged_attention_kernel, signature=signature,
                                              constexprs=constants, attrs=divisible),
                                    target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=2))
        except RuntimeError as exc:   # no ptxas / CUDA backend in this Triton build
            if "ptxas" in str(exc).lower():
                pytest.skip(str(exc)[:200])
            raise
        cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if not cuobjdump.exists():
            pytest.skip(f"no cuobjdump in this Triton build ({cuobjdump})")
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
            sass = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True).stdout
        assert "STACK:0 " in usage, usage
        assert ".128" in sass and "LDG.E.U16" not in sass and "LDG.E.64" not in sass   # 16-byte K/V loads
