"""The training loop on the toy task (hpo_engine/train/toy.py): parameters move, the reward's
quality rises, resume is bitwise exact, SFT's loss falls, checkpoints and metrics are written."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hpo_engine.models.loader import load_model
from hpo_engine.train import toy
from hpo_engine.train.checkpoint import list_checkpoints
from hpo_engine.train.cli import train as train_command
from hpo_engine.train.config import load_config
from hpo_engine.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    threads = torch.get_num_threads()
    yield toy.write_toy_task(tmp_path_factory.mktemp("toy"))
    torch.set_num_threads(threads)          # the tiny config runs with one thread


def config(task, out, **sections):
    over = {"model": {"path": str(task / "model")},
            "data": {"train": str(task / "train.jsonl"), "valid": str(task / "valid.jsonl")},
            "output_dir": str(out), "train": {"progress_bar": False}}
    for k, v in sections.items():
        over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) else v
    return load_config(REPO / "configs" / "tiny_cpu.yaml", over)


def test_every_parameter_changes(task, tmp_path):
    train(config(task, tmp_path, train={"steps": 1, "checkpoint_every": 1}, data={"valid": None}))
    before = load_model(task / "model").state_dict()
    after = load_file(str(tmp_path / "checkpoints" / "step_000001" / "model.safetensors"))
    assert set(after) == set(before)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged


@pytest.mark.slow
def test_reward_quality_rises_on_toy_task(task, tmp_path):
    """References are all the target word: quality (sentence chrF) rises as the policy learns it."""
    history = train(config(task, tmp_path, train={"steps": 20, "checkpoint_every": 20, "validate_every": 20}))
    q = [h["quality_mean"] for h in history]
    assert len(q) == 20
    first, last = sum(q[:5]) / 5, sum(q[-5:]) / 5
    assert last > first + 15, q
    print("quality per step", [round(x, 1) for x in q], "logprob error", [h["logprob_error"] for h in history])
    for h in history:   # the reward is z-scored within each group: mean 0 (std 0 once a group has converged)
        assert abs(h["reward_mean"]) < 1e-6
        assert h["reward_std"] > 0 or h["step"] > 10
        # sampler vs trainer at the rollout weights: only top-p 0.999's cut of the tail separates them
        assert h["logprob_error"] < 1e-2
    assert history[-1]["validation"]["chrF"] > 50


def test_resume_is_bitwise_exact(task, tmp_path):
    """step, save, step == load, step: the same weights, optimizer state and metrics, bit for bit."""
    a, b = tmp_path / "a", tmp_path / "b"
    hist_a = train(config(task, a, train={"steps": 2, "checkpoint_every": 1, "keep_best": 5}, data={"valid": None}))
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "checkpoints" / "step_000001", b / "checkpoints" / "step_000001")
    (b / "metrics.jsonl").write_text((a / "metrics.jsonl").read_text())   # step 2's line gets dropped, redone
    hist_b = train(config(task, b, train={"steps": 2, "checkpoint_every": 1, "keep_best": 5}, data={"valid": None}),
                   resume=True)
    assert [h["step"] for h in hist_b] == [2]
    wa = load_file(str(a / "checkpoints" / "step_000002" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_000002" / "model.safetensors"))
    w1 = load_file(str(a / "checkpoints" / "step_000001" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], w1[k]) for k in wa)          # step 2 did change the weights
    oa = torch.load(a / "checkpoints" / "step_000002" / "optimizer.pt")
    ob = torch.load(b / "checkpoints" / "step_000002" / "optimizer.pt")
    for k, st in oa["state"].items():
        assert torch.equal(st["exp_avg"], ob["state"][k]["exp_avg"])
        assert torch.equal(st["exp_avg_sq"], ob["state"][k]["exp_avg_sq"])
    def no_timing(h):
        return {k: v for k, v in h.items() if not k.endswith("_s")}
    assert no_timing(hist_a[1]) == no_timing(hist_b[0])
    assert [json.loads(l)["step"] for l in (b / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    sa = json.loads((a / "checkpoints" / "step_000002" / "state.json").read_text())
    sb = json.loads((b / "checkpoints" / "step_000002" / "state.json").read_text())
    assert sa["data"] == sb["data"] and sa["step"] == 2


def test_sft_loss_falls(task, tmp_path):
    history = train(config(task, tmp_path, mode="sft", train={"steps": 12, "checkpoint_every": 12},
                           data={"valid": None}, optim={"lr": 0.01}))
    loss = [h["sft_loss"] for h in history]
    assert loss[-1] < 0.5 * loss[0], loss


def test_cli_metrics_checkpoints_and_pruning(task, tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg = config(task, tmp_path / "out", train={"steps": 4, "checkpoint_every": 1, "validate_every": 1,
                                                 "keep_best": 2})
    import yaml
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    result = CliRunner().invoke(train_command, ["--config", str(cfg_file)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    for key in ("reward_mean", "quality_mean", "latency_mean", "kl", "clip_frac_low", "clip_frac_high",
                "entropy", "logprob_error", "rollout_tokens_per_s", "update_tokens_per_s", "rollout_s",
                "update_s", "validation"):
        assert key in lines[-1], key
    kept = [p.name for p in list_checkpoints(tmp_path / "out" / "checkpoints")]
    chrf = {l["step"]: l["validation"]["chrF"] for l in lines[:3]}
    best = sorted(chrf, key=lambda s: (chrf[s], s), reverse=True)[:2]
    assert kept == sorted([f"step_{s:06d}" for s in best] + ["step_000004"])   # best 2 + the latest
    assert not list((tmp_path / "out" / "checkpoints").glob(".tmp-*"))
    # a checkpoint is a model folder the loader opens
    assert load_model(tmp_path / "out" / "checkpoints" / "step_000004").config.vocab_size == toy.VOCAB
    # a bad config fails with the field named
    cfg_file.write_text(cfg_file.read_text().replace("group_size: 8", "group_size: -2"))
    result = CliRunner().invoke(train_command, ["--config", str(cfg_file)])
    assert result.exit_code != 0 and "rollout.group_size" in result.output


def test_bf16_model_steps_fp32_masters(task, tmp_path):
    """A bf16 model: AdamW steps float32 masters (small updates accumulate there) and the model's
    own tensors hold the masters rounded to bf16."""
    train(config(task, tmp_path, model={"dtype": "bfloat16"}, optim={"lr": 1e-5},
                 train={"steps": 1, "checkpoint_every": 1}, data={"valid": None}))
    folder = tmp_path / "checkpoints" / "step_000001"
    masters = load_file(str(folder / "extra.safetensors"))
    weights = load_file(str(folder / "model.safetensors"))
    initial = load_model(task / "model", dtype=torch.bfloat16)
    names = [n for n, _ in initial.named_parameters()]
    assert len(masters) == len(names)
    for i, (name, p) in enumerate(initial.named_parameters()):
        master = masters[f"master.{i}"]
        assert master.dtype == torch.float32 and weights[name].dtype == torch.bfloat16
        assert not torch.equal(master, p.detach().float()), name        # every master moved
        assert torch.equal(weights[name], master.to(torch.bfloat16)), name
    # some updates are below bf16's resolution: only the masters keep them
    assert any(torch.equal(weights[n], p.detach()) for n, p in initial.named_parameters())
