"""Data-parallel training throughput: the tiny config (toy task of hpo_engine/train/toy.py) in one
process and under `torchrun --standalone --nproc-per-node 2`, and the bytes each rank puts into
collectives per step.

Run:  .venv/bin/python bench/bench_distributed.py [--steps 10] [--windows 4] [--group 16] [--max-new 8]
                                                [--mode hpo|sft] [--train-llm all|lora]
Setups: 1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread (the same two cores).
Over the steps after the first (warm-up), medians: step seconds (rank 0's rollout + reward + update:
the update waits for the slowest rank at its all-reduce), the step's generated tokens / step seconds,
its trained sequence tokens / update seconds, and rank 0's `collective_bytes` (gradient all-reduces,
the reward and length gathers, the metric sums). One JSON object per setup on stdout, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def config(task: Path, out: Path, args, threads: int) -> Path:
    c = yaml.safe_load((REPO / "configs" / "tiny_cpu.yaml").read_text())
    c.update(mode=args.mode, output_dir=str(out))
    c["model"].update(path=str(task / "model"), train_llm=args.train_llm)
    c["data"] = {"train": str(task / "train.jsonl"), "valid": None}
    c["rollout"].update(windows_per_step=args.windows, group_size=args.group, max_new_tokens_per_turn=args.max_new)
    c["sft"]["batch_size"] = args.windows
    c["train"].update(steps=args.steps, checkpoint_every=args.steps, progress_bar=False, num_threads=threads,
                      tensorboard=False)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(c))
    return path


def run(task: Path, root: Path, args, processes: int, threads: int) -> dict:
    out = root / f"p{processes}t{threads}"
    cfg = config(task, out, args, threads)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(launch + ["-m", "hpo_engine", "train", "--config", str(cfg)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    steps = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = [s.get("rollout_s", 0) + s.get("reward_s", 0) + s["update_s"] for s in steps]
    med = statistics.median
    result = {"processes": processes, "threads": threads, "s_per_step": med(seconds),
              "collective_bytes_per_step": med([s.get("collective_bytes", 0) for s in steps])}
    if args.mode == "hpo":
        result["rollout_tok_s"] = med([s["gen_tokens"] / sec for s, sec in zip(steps, seconds)])
        result["rank_rollout_tok_s"] = [round(med(v)) for v in zip(*[s["rank_rollout_tokens_per_s"] for s in steps])] \
            if processes > 1 else [round(med([s["rollout_tokens_per_s"] for s in steps]))]
    result["update_tok_s"] = med([s["update_tokens_per_s"] for s in steps])
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--max-new", type=int, default=8)
    p.add_argument("--mode", choices=["hpo", "sft"], default="hpo")
    p.add_argument("--train-llm", default="all")
    args = p.parse_args()
    from hpo_engine.train import toy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        task = toy.write_toy_task(root / "task")
        results = [run(task, root, args, processes, threads) for processes, threads in ((1, 1), (1, 2), (2, 1))]
    for r in results:
        print(json.dumps(r))
    base = results[0]["s_per_step"]
    print("\n| processes x threads | s per step | speed-up | rollout tok/s (per rank) | update tok/s | "
          "collective bytes per step (rank 0) |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['processes']} x {r['threads']} | {r['s_per_step']:.3f} | {base / r['s_per_step']:.2f}x | "
              f"{r.get('rollout_tok_s', 0):,.0f} ({', '.join(f'{v:,}' for v in r.get('rank_rollout_tok_s', []))}) | "
              f"{r['update_tok_s']:,.0f} | {r['collective_bytes_per_step']:,.0f} |")


if __name__ == "__main__":
    main()
