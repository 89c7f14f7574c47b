"""Rollouts through the runtime: the training sequence is what the engine saw, and the trainer's
recomputed logprobs equal the sampler's (float32, temperature 1, no top-k / top-p cut)."""
from pathlib import Path

import pytest
import torch

from hpo_engine.train import toy
from hpo_engine.train.config import load_config
from hpo_engine.train.policy import all_assistant_logprobs, micro_batches
from hpo_engine.train.rollout import rollout
from hpo_engine.train.hpo import accumulate_policy_gradient
from hpo_engine.train.run import setup

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    folder = toy.write_toy_task(tmp_path_factory.mktemp("toy"))
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", {
        "model": {"path": str(folder / "model")}, "data": {"train": str(folder / "train.jsonl"), "valid": None},
        "output_dir": str(folder / "out"), "rollout": {"top_p": 1.0, "top_k": 0, "max_new_tokens_per_turn": 6}})
    yield setup(cfg)
    torch.set_num_threads(threads)


def test_training_sequence_is_the_dialogue(run):
    fmt, P = run.fmt, run.cfg.dialogue.frames_per_chunk
    windows = run.loader.next_batch(2)
    samples = rollout(run.engine, windows, fmt, run.cfg.rollout, seed=11)
    assert len(samples) == 2 * run.cfg.rollout.group_size
    assert [s.window for s in samples] == [0] * 8 + [1] * 8
    for s in samples:
        assert len(s.answers) == windows[s.window].num_chunks == 4
        for a in s.answers:      # each turn ends with the stop token or at the token limit
            assert a[-1] == fmt.stop_id or len(a) == 6
            assert all(t <= fmt.stop_id for t in a)          # ids above the stop token are banned
        user = sum(len(fmt.user_turn(k, P)) for k in range(4))
        assert s.num_tokens == user + sum(len(a) for a in s.answers)
        assert int(s.assistant_mask.sum()) == len(s.token_turns) == sum(len(a) for a in s.answers)
        assert int(s.speech_mask.sum()) == 4 * P and s.embeds.shape == (4 * P, 64)
        ids = s.input_ids.tolist()
        assert ids[:len(fmt.first_prefix)] == fmt.first_prefix
        assert [ids[i] for i in s.assistant_mask.nonzero().squeeze(1).tolist()] == sum(s.answers, [])
    # the same seed gives the same samples; samples of a group differ
    again = rollout(run.engine, windows, fmt, run.cfg.rollout, seed=11)
    assert [s.answers for s in again] == [s.answers for s in samples]
    assert len({str(s.answers) for s in samples[:8]}) > 1


def test_trainer_logprobs_match_sampler(run):
    """Packed full-sequence forward (trainer) vs paged-cache sampling (runtime): within 1e-4."""
    windows = run.loader.next_batch(2)
    samples = rollout(run.engine, windows, run.fmt, run.cfg.rollout, seed=5)
    assert run.cfg.rollout.temperature == 1.0 and next(run.model.parameters()).dtype == torch.float32
    for max_tokens in (10_000, 200):          # one micro-batch, and several
        recomputed = all_assistant_logprobs(run.model, samples, run.banned, 1.0, max_tokens)
        for s, lp in zip(samples, recomputed):
            gen = s.gen_logprobs[s.assistant_mask]
            assert lp.shape == gen.shape
            assert torch.allclose(lp, gen, atol=1e-4, rtol=0), float((lp - gen).abs().max())
    assert len(micro_batches(samples, range(len(samples)), 200)) > 1
    # the check is sharp: without the sampler's banned-id mask the trainer's distribution differs
    unmasked = all_assistant_logprobs(run.model, samples, None, 1.0, 10_000)
    assert max(float((lp - s.gen_logprobs[s.assistant_mask]).abs().max()) for s, lp in zip(samples, unmasked)) > 1e-3


def test_micro_batches_pack_by_tokens(run):
    windows = run.loader.next_batch(1)
    samples = rollout(run.engine, windows, run.fmt, run.cfg.rollout, seed=1)
    n = samples[0].num_tokens
    batches = micro_batches(samples, [3, 1, 2, 0], max_tokens=2 * n + max(s.num_tokens for s in samples) - n)
    assert sorted(sum(batches, [])) == [0, 1, 2, 3] and sum(batches, [])[:2] == [3, 1]
    for b in batches:
        assert len(b) == 1 or sum(samples[i].num_tokens for i in b) <= 2 * n + max(s.num_tokens for s in samples) - n


def _grads(run, samples, old, ref, gen, adv, max_tokens, checkpointing):
    import copy
    import dataclasses
    cfg = copy.deepcopy(run.cfg)
    cfg.optim.max_tokens_per_microbatch, cfg.optim.gradient_checkpointing = max_tokens, checkpointing
    r = dataclasses.replace(run, cfg=cfg)
    run.model.zero_grad(set_to_none=True)
    metrics = accumulate_policy_gradient(r, samples, list(range(len(samples))), old, ref, gen, adv,
                                         num_global_tokens=sum(len(g) for g in gen))
    grads = {n: p.grad.clone() for n, p in run.model.named_parameters()}
    run.model.zero_grad(set_to_none=True)
    return grads, metrics


def test_update_gradient_is_micro_batch_invariant(run):
    """One global batch: a single micro-batch, many small ones and gradient checkpointing give the
    same gradient and the same token-mean metrics."""
    P = run.cfg.dialogue.frames_per_chunk
    samples = rollout(run.engine, run.loader.next_batch(2), run.fmt, run.cfg.rollout, seed=3)
    old = all_assistant_logprobs(run.model, samples, run.banned, 1.0, 10_000)
    gen = [s.gen_logprobs[s.assistant_mask] for s in samples]
    ref = [o + 0.05 * torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(old)]
    adv = torch.randn(len(samples), generator=torch.Generator().manual_seed(0))
    whole, m_whole = _grads(run, samples, old, ref, gen, adv, 10_000, False)
    split, m_split = _grads(run, samples, old, ref, gen, adv, 60, False)
    ckpt, _ = _grads(run, samples, old, ref, gen, adv, 10_000, True)
    assert len(micro_batches(samples, range(len(samples)), 60)) >= 4
    assert any(float(g.abs().max()) > 0 for g in whole.values())
    for name in whole:
        assert torch.allclose(whole[name], split[name], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(whole[name], ckpt[name], atol=1e-6, rtol=1e-4), name
    for k in ("loss", "kl", "entropy", "logprob_error"):
        assert abs(m_whole[k] - m_split[k]) < 1e-5, k
