"""GPU check of the Triton paged-attention kernels (run by bench/gpu_check.sh; < 6 minutes on an H100).

1. correctness: Triton vs the pure-PyTorch reference in bf16 (plus fp16 / fp32 spot checks) on fresh
   random mixed batches, outputs poisoned with NaN; store_kv exact with -1 slots.
2. CUDA graph: the decode call captured and replayed on new data (no host sync inside the call);
   then the engine's decode steps (runtime/cuda_graphs.py) on a random SmolLM2-shaped fp32 model,
   graphs vs eager: same greedy tokens, logprobs close, ms per decode step at B = 1, 8, 32.
3. bandwidth: a device-to-device copy (bytes read + written) as the ceiling.
4. decode, Qwen3-4B shape (32 q / 8 kv heads, d 128), bf16, block 16: B=64 ctx 4096 and B=1 ctx 32768.
   Achieved bandwidth = KV bytes read / time, against the copy, torch SDPA and FlexAttention on the
   same KV laid out contiguously, and flash-attn when importable.
5. chunk extension: 14 new tokens into a 4k context (B=16 and B=1), same baselines.
Prints a short table last; writes every number to $OUT/gpu_check.json.

`--dry-run`: tiny shapes on CPU under TRITON_INTERPRET=1 (set by gpu_check.sh), host-clock timing,
FlexAttention uncompiled; it checks this script's logic, not speed.
"""
import argparse
import importlib.util
import json
import math
import os
import pathlib
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
KERNELS = REPO / "hpo_engine" / "kernels"
START = time.time()
BUDGET_S = 330          # stop optional work past this point (the shell wrapper kills at 350 s)


def load_kernels():
    """Load hpo_engine/kernels/ as a package without needing hpo_engine installed (the device copy is bare)."""
    spec = importlib.util.spec_from_file_location("gpu_check_kernels", KERNELS / "__init__.py",
                                                  submodule_search_locations=[str(KERNELS)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pkg
    spec.loader.exec_module(pkg)
    from gpu_check_kernels import reference, triton_paged_attention, triton_store_kv
    return pkg, reference, triton_paged_attention, triton_store_kv


def paged_batch(torch, seqs, hq, hkv, d, block, dtype, device, pool_factor=3, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    pages = [-(-kv // block) for _, kv in seqs]
    num_blocks = max(1, int(pool_factor * sum(pages)))
    max_blocks = max(pages) + 1
    perm = torch.randperm(num_blocks, generator=g)
    table = torch.randint(0, num_blocks, (len(seqs), max_blocks), generator=g, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages):
        table[b, :n] = perm[used:used + n].to(torch.int32)
        used += n
    k_cache = torch.randn(num_blocks, block, hkv, d, device=device, dtype=dtype)
    v_cache = torch.randn(num_blocks, block, hkv, d, device=device, dtype=dtype)
    T = sum(n for n, _ in seqs)
    q = torch.randn(T, hq, d, device=device, dtype=dtype)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor([n for n, _ in seqs]).cumsum(0)
    lens = torch.tensor([kv for _, kv in seqs], dtype=torch.int32)
    return q, k_cache, v_cache, table.to(device), lens.to(device), cu.to(device)


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


class Timer:
    def __init__(self, torch, cuda):
        self.torch, self.cuda = torch, cuda

    def __call__(self, fn, rep_ms=200):
        """Median milliseconds of fn()."""
        if self.cuda:
            import triton.testing
            return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return sorted(times)[1]


def check_correctness(torch, ref_mod, attn_mod, store_mod, pkg, device, dry, results):
    mixed = [(1, 1328), (5, 18), (129, 463), (14, 14)] if not dry else [(1, 70), (5, 18), (20, 40), (14, 14)]
    cases = [  # (Hq, Hkv, D, block, dtype, splits)
        (32, 8, 128, 16, torch.bfloat16, None), (9, 3, 64, 32, torch.bfloat16, None),
        (4, 4, 64, 16, torch.bfloat16, 1), (15, 3, 80, 32, torch.bfloat16, 4),
        (10, 2, 96, 48, torch.bfloat16, None), (16, 2, 128, 16, torch.float16, 2),
        (6, 2, 64, 16, torch.float32, None),
    ]
    if dry:
        cases = cases[:2] + cases[3:4]
    rows, ok = [], True
    for i, (hq, hkv, d, block, dtype, splits) in enumerate(cases):
        q, kc, vc, table, lens, cu = paged_batch(torch, mixed, hq, hkv, d, block, dtype, device, seed=i)
        ref = ref_mod.paged_attention_ref(q.float(), kc.float(), vc.float(), table, lens, cu)
        out = torch.full_like(q, float("nan"))
        attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu, out=out, num_splits=splits)
        err = rel_err(out, ref)
        tol = 1e-2 if dtype != torch.float32 else 1e-4
        good = not out.isnan().any().item() and err < tol
        ok &= good
        rows.append(dict(hq=hq, hkv=hkv, d=d, block=block, dtype=str(dtype), splits=splits, rel_err=err, ok=good))
    # decode-only batch through the public dispatch (CUDA -> Triton, automatic split-KV)
    q, kc, vc, table, lens, cu = paged_batch(torch, [(1, 3000 if not dry else 600), (1, 7)], 32, 8, 128, 16,
                                             torch.bfloat16, device, seed=99)
    ref = ref_mod.paged_attention_ref(q.float(), kc.float(), vc.float(), table, lens, cu)
    out = pkg.paged_attention(q, kc, vc, table, lens, cu) if device == "cuda" else \
        attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu)
    err = rel_err(out, ref)
    ok &= err < 1e-2
    rows.append(dict(case="decode via dispatch", rel_err=err, ok=err < 1e-2))
    # store_kv exact, -1 slots skipped
    kc = torch.randn(20, 16, 8, 128, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    key, value = torch.randn(37, 8, 128, device=device, dtype=torch.bfloat16), torch.randn(37, 8, 128, device=device,
                                                                                          dtype=torch.bfloat16)
    slots = torch.randperm(320)[:37]
    slots[[0, 9, 36]] = -1
    slots = slots.to(device)
    k_ref, v_ref = kc.clone(), vc.clone()
    ref_mod.store_kv_ref(key, value, k_ref, v_ref, slots)
    store_mod.store_kv_triton(key, value, kc, vc, slots)
    exact = bool(torch.equal(kc, k_ref) and torch.equal(vc, v_ref))
    ok &= exact
    rows.append(dict(case="store_kv exact", ok=exact))
    results["correctness"] = dict(ok=ok, cases=rows)
    return ok


def check_cuda_graph(torch, attn_mod, results):
    """Capture one decode call; replay on new q and new seq_lens (same shapes); compare with eager."""
    q, kc, vc, table, lens, cu = paged_batch(torch, [(1, 4096)] * 8, 32, 8, 128, 16, torch.bfloat16, "cuda", seed=5)
    out = torch.empty_like(q)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu, out=out)
    q.copy_(torch.randn_like(q))
    lens.copy_(torch.randint(1000, 4097, lens.shape, device="cuda", dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    eager = attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu)
    err = rel_err(out, eager)
    results["cuda_graph"] = dict(rel_err_vs_eager=err, ok=err < 1e-3)
    return err < 1e-3


def check_engine_graphs(torch, pkg, device, dry, results):
    """Engine decode steps replayed from CUDA graphs vs eager, same model and streams (fp32, greedy)."""
    sys.modules.setdefault("hpo_engine.kernels", pkg)        # the bare device copy: hpo_engine is not installed
    sys.path.insert(0, str(REPO))
    from hpo_engine import Engine, SamplingParams
    from hpo_engine.config import ModelConfig
    from hpo_engine.models.decoder import CausalLM
    shape = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                 num_kv_heads=1) if dry else dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                                  num_layers=30, num_heads=9, num_kv_heads=3)
    cfg = ModelConfig("LlamaForCausalLM", head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    model = CausalLM(cfg).to(device=device, dtype=torch.float32).eval()
    batches, new_tokens = ((1, 3), 4) if dry else ((1, 8, 32), 64)
    rows, outputs = [], {}
    for mode, graphs in (("eager", False), ("graphs", True)):
        engine = Engine(model, block_size=16, num_blocks=4096 if not dry else 256, max_num_seqs=max(batches),
                        cuda_graphs=graphs)
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            streams = [engine.open_stream() for _ in range(batch)]
            params = SamplingParams(max_new_tokens=new_tokens, stop_token_ids=[])
            for i, s in enumerate(streams):
                s.append(torch.randint(10, cfg.vocab_size, (100 + 7 * i,), generator=g).tolist())
            engine.generate_many([(s, params) for s in streams])     # first turn (graphs captured here)
            for s in streams:
                s.append(torch.randint(10, cfg.vocab_size, (10,), generator=g).tolist())
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = engine.generate_many([(s, params) for s in streams])
            if device == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3 / new_tokens
            outputs[mode, batch] = outs
            if graphs and device == "cuda" and not engine.runner.graphs.graphs:
                raise RuntimeError("the engine fell back to eager decoding: CUDA graph capture failed (see warnings)")
            rows.append(dict(mode=mode, batch=batch, ms_per_decode_step=ms))
            for s in streams:
                s.close()
    ok, worst = True, 0.0
    for batch in batches:
        for a, b in zip(outputs["graphs", batch], outputs["eager", batch]):
            same = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), len(a.token_ids))
            worst = max([worst] + [abs(x - y) for x, y in zip(a.logprobs[:same], b.logprobs[:same])])
            ok &= same >= len(a.token_ids) // 2       # near-ties may flip late in fp32 (different KV splits)
    ok &= worst < 1e-3
    results["engine_graphs"] = dict(ok=ok, worst_logprob_diff=worst, steps=rows,
                                    captured_sizes=sorted(engine.runner.graphs.graphs))
    return ok


def copy_bandwidth(torch, timer, device, dry):
    nbytes = (64 << 20) if dry else (2 << 30)
    src = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9, ms


def dense_kv(torch, kc, vc, table, batch, ctx):
    """The same KV contiguous as [B, Hkv, L, D] (what SDPA / Flex / a dense cache would read)."""
    idx = table[:, : ctx // kc.shape[1]].long()
    k = kc[idx].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    v = vc[idx].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    return k, v


def bench_attention(torch, attn_mod, timer, device, dry, batch, new, ctx, copy_gbps, results_list, label):
    import torch.nn.functional as F
    hq, hkv, d, block = 32, 8, 128, 16
    q, kc, vc, table, lens, cu = paged_batch(torch, [(new, ctx)] * batch, hq, hkv, d, block, torch.bfloat16, device,
                                             pool_factor=1.25, seed=batch + ctx)
    kv_bytes = 2 * batch * ctx * hkv * d * 2
    q4 = q.view(batch, new, hq, d).transpose(1, 2)            # [B, Hq, n, D]
    k, v = dense_kv(torch, kc, vc, table, batch, ctx)
    mask = None
    if new > 1:
        mask = (torch.arange(ctx, device=device)[None, :]
                <= torch.arange(new, device=device)[:, None] + (ctx - new))
    ref = F.scaled_dot_product_attention(q4.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
    ref = ref.transpose(1, 2).reshape(q.shape)
    out = torch.empty_like(q)
    impls = {
        "triton_paged": lambda: attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu, out=out),
        "triton_paged_nosplit": lambda: attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu, out=out,
                                                                        num_splits=1),
        "sdpa_contig": lambda: F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, enable_gqa=True),
    }
    auto = attn_mod.choose_launch(q.shape[0], batch, hq, hkv, d, q.dtype, table.shape[1], block, q.device)
    results_list.append(dict(case=label, impl="launch_choice", block_m=auto[0], block_q=auto[1], tile_n=auto[2],
                             splits=auto[3], num_warps=auto[4],
                             info=f"BLOCK_M={auto[0]} TILE_N={auto[2]} splits={auto[3]} warps={auto[4]}"))
    for forced in ((2, 4, 8) if new == 1 else (2,)):   # split-KV tuning data for the next device run
        if forced != auto[3] and (not dry or forced == 2):
            impls[f"triton_paged_split{forced}"] = (
                lambda n=forced: attn_mod.paged_attention_triton(q, kc, vc, table, lens, cu, out=out, num_splits=n))
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = flex_attention if dry else torch.compile(flex_attention, dynamic=False)
        block_mask = None
        if new > 1:
            offset = ctx - new

            def causal(b, h, q_idx, kv_idx):
                return kv_idx <= q_idx + offset
            block_mask = create_block_mask(causal, B=None, H=None, Q_LEN=new, KV_LEN=ctx, device=device)
        impls["flex_attention"] = lambda: flex(q4, k, v, block_mask=block_mask, enable_gqa=True)
    except Exception as exc:  # noqa: BLE001 - a missing baseline is reported, not fatal
        results_list.append(dict(case=label, impl="flex_attention", error=repr(exc)))
    try:
        from flash_attn import flash_attn_func
        qf, kf, vf = q.view(batch, new, hq, d), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        impls["flash_attn"] = lambda: flash_attn_func(qf, kf, vf, causal=True)   # bottom-right causal
    except Exception:  # noqa: BLE001 - optional
        pass
    rows = {}
    for name, fn in impls.items():
        if time.time() - START > BUDGET_S and name != "triton_paged":
            results_list.append(dict(case=label, impl=name, error="skipped: time budget"))
            continue
        try:
            got = fn()
            if name.startswith("triton"):
                got = out
            elif name == "flash_attn":
                got = got.reshape(q.shape)
            else:
                got = got.transpose(1, 2).reshape(q.shape)
            err = rel_err(got, ref)
            ms = timer(fn)
            row = dict(case=label, impl=name, batch=batch, new=new, ctx=ctx, ms=ms, kv_bytes=kv_bytes,
                       gbps=kv_bytes / (ms * 1e-3) / 1e9, rel_err=err)
            row["frac_of_copy"] = row["gbps"] / copy_gbps
            rows[name] = row
            results_list.append(row)
        except Exception as exc:  # noqa: BLE001
            results_list.append(dict(case=label, impl=name, error=repr(exc)[:300]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check_out"))
    args = parser.parse_args()
    import torch
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda:
        if not args.dry_run:
            sys.exit("gpu_check: no CUDA device (use --dry-run to check the script on CPU)")
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("gpu_check --dry-run: set TRITON_INTERPRET=1 before starting (gpu_check.sh does)")
    device = "cuda" if cuda else "cpu"
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pkg, ref_mod, attn_mod, store_mod = load_kernels()
    import triton
    results = dict(device=torch.cuda.get_device_name() if cuda else "cpu (dry run, Triton interpreter)",
                   torch=torch.__version__, triton=triton.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                   dry_run=args.dry_run, benchmarks=[])
    if cuda:
        props = torch.cuda.get_device_properties(0)
        results.update(sm_count=props.multi_processor_count, memory_gb=props.total_memory / 2**30)
    timer = Timer(torch, cuda)
    status = {}

    def stage(name, fn):
        t0 = time.time()
        try:
            status[name] = fn()
        except Exception:  # noqa: BLE001 - record and go on: the other stages still tell something
            status[name] = False
            results.setdefault("errors", {})[name] = traceback.format_exc()[-3000:]
        results.setdefault("stage_seconds", {})[name] = round(time.time() - t0, 1)
        (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))

    stage("correctness", lambda: check_correctness(torch, ref_mod, attn_mod, store_mod, pkg, device, args.dry_run,
                                                   results))
    if cuda:
        stage("cuda_graph", lambda: check_cuda_graph(torch, attn_mod, results))
    stage("engine_graphs", lambda: check_engine_graphs(torch, pkg, device, args.dry_run, results))

    def copy_stage():
        gbps, ms = copy_bandwidth(torch, timer, device, args.dry_run)
        results["copy"] = dict(gbps=gbps, ms=ms)
        return True
    stage("copy", copy_stage)
    copy_gbps = results.get("copy", {}).get("gbps", float("nan"))

    # the two goal cases first: later ones lose their baselines if the time budget runs out
    cases = [("decode B=64 ctx=4096", 64, 1, 4096), ("extend 14 B=16 ctx=4096", 16, 14, 4096),
             ("decode B=1 ctx=32768", 1, 1, 32768), ("extend 14 B=1 ctx=4096", 1, 14, 4096)]
    if args.dry_run:
        cases = [("decode B=4 ctx=256", 4, 1, 256), ("decode B=1 ctx=1024", 1, 1, 1024),
                 ("extend 14 B=2 ctx=256", 2, 14, 256)]
    for label, batch, new, ctx in cases:
        stage(label, lambda: bool(bench_attention(torch, attn_mod, timer, device, args.dry_run, batch, new, ctx,
                                                  copy_gbps, results["benchmarks"], label)))
    results["total_seconds"] = round(time.time() - START, 1)
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))

    # short table last
    print(f"\n== gpu_check on {results['device']} (torch {results['torch']}, triton {results['triton']}) ==")
    corr = results.get("correctness", {})
    worst = max((c.get("rel_err", 0) for c in corr.get("cases", [])), default=float("nan"))
    print(f"correctness bf16/fp16/fp32 vs reference: {'OK' if corr.get('ok') else 'FAIL'} "
          f"({len(corr.get('cases', []))} checks, worst rel err {worst:.2e})")
    if "cuda_graph" in results:
        print(f"cuda graph capture/replay: {'OK' if results['cuda_graph']['ok'] else 'FAIL'}")
    if "engine_graphs" in results:
        eg = results["engine_graphs"]
        print(f"engine decode graphs vs eager: {'OK' if eg['ok'] else 'FAIL'} "
              f"(worst logprob diff {eg['worst_logprob_diff']:.1e}); ms per decode step: "
              + ", ".join(f"{r['mode']} B={r['batch']} {r['ms_per_decode_step']:.2f}" for r in eg["steps"]))
    print(f"copy bandwidth (read+write): {copy_gbps:.0f} GB/s")
    print(f"{'case':26s} {'impl':22s} {'ms':>9s} {'GB/s':>8s} {'%copy':>6s} {'rel err':>8s}")
    for row in results["benchmarks"]:
        if "info" in row or "error" in row:
            print(f"{row['case']:26s} {row['impl']:22s} {row.get('info') or row['error'][:60]}")
        else:
            print(f"{row['case']:26s} {row['impl']:22s} {row['ms']:9.3f} {row['gbps']:8.0f} "
                  f"{100 * row['frac_of_copy']:5.0f}% {row['rel_err']:8.1e}")
    if results.get("errors"):
        print("stage errors (see gpu_check.json):", ", ".join(results["errors"]))
    print(f"total {results['total_seconds']} s; full numbers in {out_dir / 'gpu_check.json'}")
    return 0 if all(v for k, v in status.items() if k in ("correctness", "cuda_graph", "engine_graphs")) else 1


if __name__ == "__main__":
    sys.exit(main())
