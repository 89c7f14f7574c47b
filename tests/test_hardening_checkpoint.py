"""Checkpoint integrity: a manifest of sha256 checksums is written with every training checkpoint and SST
export and checked when it is opened; `--resume` skips a damaged checkpoint (truncated safetensors,
broken state.json, one flipped bit) for the newest intact one and says which and why."""
import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hpo_engine.manifest import IntegrityError
from hpo_engine.sst.checkpoint import open_sst
from hpo_engine.sst.config import SSTConfigError
from hpo_engine.train import checkpoint as ckpt
from hpo_engine.train.trainer import train
from test_train_hpo import config, task  # noqa: F401
from test_train_speech import make_cfg, workdir  # noqa: F401


def flip_bit(path, from_end=9):
    """One bit of tensor data (safetensors keeps its header first): the file still parses, the numbers differ."""
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def break_json(path):
    path.write_text(path.read_text()[:-5])


DAMAGE = {"flipped bit": (flip_bit, "model.safetensors", "changed after it was written"),
          "truncated safetensors": (truncate, "model.safetensors", "is truncated"),
          "broken state.json": (break_json, "state.json", "is truncated")}


def save_steps(root, steps):
    weights = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(weights.parameters())
    for step in steps:
        with torch.no_grad():
            weights.weight.add_(1.0)
        tensors = {f"llm.{k}": v for k, v in weights.state_dict().items()}
        ckpt.save_checkpoint(root, step, tensors, optimizer, {"data": {"position": step}}, root)
    return optimizer


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_on_load(tmp_path, damage):
    optimizer = save_steps(tmp_path, [1])
    path = ckpt.step_dir(tmp_path, 1)
    assert json.loads((path / "manifest.json").read_text())["files"].keys() >= {"model.safetensors", "state.json",
                                                                                 "optimizer.pt", "rng.pt"}
    fn, name, reason = DAMAGE[damage]
    fn(path / name)
    with pytest.raises(IntegrityError, match=reason) as info:
        ckpt.load_checkpoint(path, optimizer)
    assert str(path / name) in str(info.value)


def test_resume_takes_the_newest_intact_checkpoint_and_says_why(tmp_path, caplog):
    optimizer = save_steps(tmp_path, [1, 2, 3])
    flip_bit(ckpt.step_dir(tmp_path, 3) / "model.safetensors")
    break_json(ckpt.step_dir(tmp_path, 2) / "state.json")
    with caplog.at_level(logging.WARNING, logger="hpo_engine.train"):
        path, tensors, state = ckpt.resume_checkpoint(tmp_path, optimizer)
    assert path == ckpt.step_dir(tmp_path, 1) and state["step"] == 1
    assert tensors["llm.weight"].eq(ckpt.load_tensors(path)["llm.weight"]).all()
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipping step_000003" in m and "changed after it was written" in m for m in messages)
    assert any("skipping step_000002" in m and "state.json is truncated" in m for m in messages)
    assert any("resuming from step_000001" in m for m in messages)
    truncate(path / "rng.pt")
    with pytest.raises(FileNotFoundError, match="every checkpoint .* is damaged"):
        ckpt.resume_checkpoint(tmp_path, optimizer)


def test_resume_past_a_flipped_bit_equals_the_uninterrupted_run(task, tmp_path):  # noqa: F811
    """step 2's checkpoint is damaged: --resume redoes step 2 from step 1 and gets step 2's weights bit for bit."""
    cfg = config(task, tmp_path, train={"steps": 2, "checkpoint_every": 1, "keep_best": 5}, data={"valid": None})
    train(cfg)
    second = tmp_path / "checkpoints" / "step_000002" / "model.safetensors"
    straight = {k: v.clone() for k, v in load_file(str(second)).items()}   # load_file maps the file
    flip_bit(second)
    history = train(cfg, resume=True)
    assert [h["step"] for h in history] == [2]
    again = load_file(str(second))
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_a_damaged_sst_export_is_named_when_opened(workdir, tmp_path):  # noqa: F811
    cfg = make_cfg(workdir / "sst", tmp_path / "out")
    cfg.train.steps = 1
    train(cfg)
    export = tmp_path / "out" / "sst"
    assert "speech/projector.safetensors" in json.loads((export / "manifest.json").read_text())["files"]
    assert open_sst(export).config.trained
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    flip_bit(damaged / "speech" / "projector.safetensors")
    with pytest.raises(SSTConfigError, match="projector.safetensors changed after it was written"):
        open_sst(damaged)
