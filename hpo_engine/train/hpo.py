"""One HPO step, read top to bottom in `hpo_step`: rollout -> reward -> advantage -> update.

The engine holds the very model object being trained (no weight copy); after every update its
cached prefixes (K/V computed under the old weights) are dropped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from hpo_engine.rl.loss import policy_loss
from hpo_engine.train.master_weights import optimizer_step
from hpo_engine.train.policy import all_assistant_logprobs, assistant_logprobs, micro_batches, pad_rows
from hpo_engine.train.reward import rollout_rewards
from hpo_engine.train.rollout import rollout
from hpo_engine.train.run import Run, step_seed

# Metrics of policy_loss that are token means over the global batch: they add up over micro-batches.
SUMMED = ("loss", "pg_loss", "kl_loss", "kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac",
          "ratio_mean", "is_weight_mean", "logprob_error", "entropy")


def hpo_step(run: Run, step: int) -> dict:
    """One HPO step: B x G rollouts, hierarchical reward, several clipped policy-gradient updates.
    Under torchrun each rank rolls out and rewards its share of the B windows (train/distributed.py);
    the metrics are those of the whole step, on every rank."""
    cfg, world = run.cfg, run.world
    t0 = time.perf_counter()
    # 1. rollout: this rank's windows x G samples through the runtime, on the live weights
    run.engine.reset_prefix_cache()     # no prefix computed in another batch (validation): exact resume
    windows = run.loader.next_batch(cfg.rollout.windows_per_step)       # the whole step's, on every rank
    mine = world.share(len(windows))
    samples = rollout(run.engine, windows[mine.start:mine.stop], run.fmt, cfg.rollout,
                      seed=step_seed(cfg, step), embed_speech=run.embed_speech,
                      rows_per_embedding=run.rows_per_embedding, first_window=mine.start)
    t1 = time.perf_counter()
    # 2. reward: per-segment quality and latency -> hierarchical reward, z-scored within each window's group
    rewards, parts = rollout_rewards(samples, windows, run.codec, run.scorer, cfg, run.embedder) if samples \
        else ([], {"quality": [], "latency": [], "latency_term": []})     # more ranks than windows
    # 3. advantage: the reward itself (GRPO-style, already group-normalised), on every assistant token
    advantages = torch.tensor(rewards, dtype=torch.float32)
    t2 = time.perf_counter()
    # 4. update: clipped policy gradient against the rollout-time, reference and sampler logprobs
    u = policy_update(run, step, samples, advantages, first_sample=mine.start * cfg.rollout.group_size)
    run.engine.reset_prefix_cache()     # K/V cached under the old weights no longer match the model
    t3 = time.perf_counter()
    # the whole step's rewards and parts, in step order (one gather)
    rows = world.concat(list(zip(rewards, parts["quality"], parts["latency"], parts["latency_term"])))
    rewards, quality, latency, latency_term = (list(c) for c in zip(*rows))
    rollout_speed = world.all_gather(u.gen_tokens / max(t1 - t0, 1e-9))
    return {"reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            "quality_mean": float(np.mean(quality)), "latency_mean": float(np.mean(latency)),
            "latency_term_mean": float(np.mean(latency_term)), **u.loss_means,
            "grad_norm": u.grad_norm, "updates": u.updates, "samples": len(rewards), "gen_tokens": u.gen_tokens,
            "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2, "old_ref_logprobs_s": u.logprobs_s,
            "rollout_tokens_per_s": u.gen_tokens / max(t1 - t0, 1e-9),   # this rank's
            **({"rank_rollout_tokens_per_s": rollout_speed} if world.size > 1 else {}),
            "update_tokens_per_s": u.update_tokens / max(t3 - t2, 1e-9)}


@dataclass
class Update:
    loss_means: dict[str, float]        # policy_loss metrics, mean over the optimizer steps
    grad_norm: float                    # mean over the optimizer steps
    updates: int                        # optimizer steps
    gen_tokens: int                     # sampled tokens trained on
    update_tokens: int                  # tokens of the trained sequences
    logprobs_s: float                   # time of the old / ref logprobs


def policy_update(run: Run, step: int, samples, advantages: torch.Tensor, first_sample: int = 0) -> Update:
    """The logprobs the loss compares with (old = trainer at the rollout weights, ref = frozen initial
    model, gen = the sampler's own: their gap is the train / inference mismatch), then one optimizer
    step per shuffled global batch of token-packed micro-batches (exact token mean over the batch).
    `samples` are this rank's, the step's samples first_sample.. (all of them in one process); the
    global batches are cut from one permutation of the step's samples, and each rank backpropagates
    its members of each batch before the gradients are summed over ranks."""
    cfg, world = run.cfg, run.world
    t0 = time.perf_counter()
    old = all_assistant_logprobs(run.model, samples, run.banned, cfg.rollout.temperature,
                                 cfg.optim.max_tokens_per_microbatch, run.embed_speech)
    ref = reference_logprobs(run, samples)
    gen = [s.gen_logprobs[s.assistant_mask].to(run.model.inv_freq.device) for s in samples]
    t_logprobs = time.perf_counter() - t0
    gen_lengths = world.concat([len(g) for g in gen])      # every sample of the step, in step order
    order = np.random.default_rng([cfg.seed, step]).permutation(len(gen_lengths))
    sums: dict[str, float] = {}
    grad_norms, update_tokens = [], 0
    for start in range(0, len(order), cfg.optim.global_batch):
        batch = order[start:start + cfg.optim.global_batch]
        local = [int(i) - first_sample for i in batch if 0 <= int(i) - first_sample < len(samples)]
        run.trainable.zero_grad()
        m = accumulate_policy_gradient(run, samples, local, old, ref, gen, advantages,
                                       num_global_tokens=sum(gen_lengths[i] for i in batch))
        for k in SUMMED:
            sums[k] = sums.get(k, 0.0) + m.get(k, 0.0)
        update_tokens += sum(samples[i].num_tokens for i in local)
        world.sum_gradients(run.trainable.parameters())
        grad_norms.append(optimizer_step(run))
    n = len(grad_norms)
    totals = world.sum({**sums, "update_tokens": update_tokens})
    return Update({k: totals[k] / n for k in sums}, float(np.mean(grad_norms)), n, sum(gen_lengths),
                  int(totals["update_tokens"]), t_logprobs)


def reference_logprobs(run: Run, samples) -> list[torch.Tensor]:
    """Logprobs under the frozen initial policy, with the initial projector: a reloaded LLM when LLM
    weights train or a LoRA continues the base's, else the live LLM itself (a new LoRA switched off)."""
    cfg = run.cfg
    args = (samples, run.banned, cfg.rollout.temperature, cfg.optim.max_tokens_per_microbatch, run.ref_projector)
    if run.ref_model is not None:
        return all_assistant_logprobs(run.ref_model, *args)
    if run.trainable.lora is not None:
        with run.trainable.lora.disabled():
            return all_assistant_logprobs(run.model, *args)
    return all_assistant_logprobs(run.model, *args)


def accumulate_policy_gradient(run: Run, samples, batch, old, ref, gen, advantages, num_global_tokens: int) -> dict:
    """Backward of `policy_loss` over this rank's members `batch` of one global batch, in token-packed
    micro-batches. Every micro-batch divides by the global batch's token count (all ranks' samples), so
    the gradient and token-mean metrics summed over micro-batches and ranks are those of one call on
    the whole batch."""
    cfg, lc = run.cfg, run.cfg.loss
    sums: dict[str, float] = {}
    for mb in micro_batches(samples, batch, cfg.optim.max_tokens_per_microbatch):
        cur, ent = assistant_logprobs(run.model, [samples[i] for i in mb], run.banned, cfg.rollout.temperature,
                                      entropy=True, checkpointing=cfg.optim.gradient_checkpointing,
                                      embed_speech=run.embed_speech)
        lp, mask = pad_rows(cur)
        W = lp.shape[1]
        loss, m = policy_loss(lp, pad_rows([old[i] for i in mb], W)[0], pad_rows([ref[i] for i in mb], W)[0],
                              pad_rows([gen[i] for i in mb], W)[0], advantages[list(mb)].to(lp.device), mask,
                              clip_eps_low=lc.clip_eps_low, clip_eps_high=lc.clip_eps_high,
                              dual_clip_c=lc.dual_clip_c, kl_coef=lc.kl_coef,
                              on_policy_kl_weight=lc.on_policy_kl_weight,
                              importance_sampling=lc.importance_sampling, is_cap=lc.is_cap,
                              num_global_tokens=num_global_tokens, entropy=pad_rows(ent, W)[0])
        loss.backward()
        for k in SUMMED:
            sums[k] = sums.get(k, 0.0) + m.get(k, 0.0)
    return sums
