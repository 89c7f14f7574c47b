"""Training throughput of the tiny config (configs/tiny_cpu.yaml on the toy task of hpo_engine/train/toy.py).

Run:  .venv/bin/python bench/bench_train.py [--steps 10] [--threads 1] [--windows 2] [--group 8] [--max-new 4]
                                          [--mode sft] [--compare-batching]
      (or under pytest: .venv/bin/python -m pytest bench/bench_train.py --benchmark-only)
Reports, over the steps after the first (warm-up): rollout tokens/s (generated tokens / rollout time),
update tokens/s (packed sequence tokens through forward + backward / update time, which includes the
old and reference logprob passes), peak RSS of the process, and the share of step time in rollout,
reward and update. One JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(steps: int = 10, threads: int = 1, windows: int = 2, group: int = 8, max_new: int = 4,
            mode: str = "hpo", windows_together: int | None = None) -> dict:
    import torch

    from hpo_engine.train import toy
    from hpo_engine.train.config import load_config
    from hpo_engine.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        folder = toy.write_toy_task(Path(tmp) / "toy")
        cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", {
            "mode": mode, "model": {"path": str(folder / "model")},
            "data": {"train": str(folder / "train.jsonl"), "valid": None}, "output_dir": str(folder / "out"),
            "rollout": {"windows_per_step": windows, "group_size": group, "max_new_tokens_per_turn": max_new,
                        "windows_together": windows_together},
            "optim": {"global_batch": windows * group // 2},
            "train": {"steps": steps + 1, "checkpoint_every": 10_000, "progress_bar": False, "num_threads": threads}})
        start = time.perf_counter()
        history = train(cfg)[1:]            # the first step warms up
        wall = time.perf_counter() - start
    if mode == "sft":
        return {"mode": "sft", "steps": len(history), "threads": threads,
                "update_tokens_per_s": sum(h["update_tokens_per_s"] for h in history) / len(history),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    total = {k: sum(h[k] for h in history) for k in ("rollout_s", "reward_s", "update_s", "gen_tokens")}
    step_s = total["rollout_s"] + total["reward_s"] + total["update_s"]
    update_tokens = sum(h["update_tokens_per_s"] * h["update_s"] for h in history)
    return {
        "mode": "hpo", "steps": len(history), "windows_together": windows_together or windows, "threads": threads, "torch_threads": torch.get_num_threads(),
        "samples_per_step": windows * group, "gen_tokens_per_step": total["gen_tokens"] / len(history),
        "rollout_tokens_per_s": total["gen_tokens"] / total["rollout_s"],
        "update_tokens_per_s": update_tokens / total["update_s"],
        "share_rollout": total["rollout_s"] / step_s, "share_reward": total["reward_s"] / step_s,
        "share_update": total["update_s"] / step_s,
        "share_old_ref_logprobs": sum(h["old_ref_logprobs_s"] for h in history) / step_s,
        "step_s": step_s / len(history),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s_incl_setup": wall}


def test_bench_train_tiny(benchmark):
    result = benchmark.pedantic(measure, kwargs={"steps": 3}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=4)
    ap.add_argument("--mode", choices=["hpo", "sft"], default="hpo")
    ap.add_argument("--compare-batching", action="store_true",
                    help="rollout tokens/s with every window's group in one batch vs one window at a time, "
                         "interleaved 3 x each in this process; medians and their ratio")
    a = ap.parse_args()
    if a.compare_batching:
        import statistics
        runs = {"all_windows": [], "one_window": []}
        for _ in range(3):
            runs["all_windows"].append(measure(a.steps, a.threads, a.windows, a.group, a.max_new)["rollout_tokens_per_s"])
            runs["one_window"].append(measure(a.steps, a.threads, a.windows, a.group, a.max_new,
                                              windows_together=1)["rollout_tokens_per_s"])
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(json.dumps({"rollout_tokens_per_s": runs, "median": med,
                          "ratio_all_over_one": med["all_windows"] / med["one_window"]}, indent=1))
    else:
        print(json.dumps(measure(a.steps, a.threads, a.windows, a.group, a.max_new, a.mode), indent=1))
