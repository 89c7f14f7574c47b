"""The HPO / GRPO policy loss as a pure function (semantics of NeMo-RL's ClippedPGLossFn).

Per unmasked token t of sample i, with cur = ``logprobs`` (the only input that carries
gradient), old = ``old_logprobs`` (trainer, weights of the rollout), ref = ``ref_logprobs``
(frozen reference), gen = ``gen_logprobs`` (the sampler's own logprobs) and A_i = ``advantages[i]``:

    ratio  = exp(cur - old)
    pg     = max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))
    pg     = min(pg, -A * c)                    where A < 0, if dual_clip_c = c is given
    w_is   = exp(old - gen)                     (min(w_is, is_cap) if is_cap is given)
    w_kl   = exp(cur - gen).detach()            (1 if on_policy_kl_weight is False)
    k3     = exp(ref - cur) - (ref - cur) - 1
    loss   = sum_{unmasked i,t} (w_is * pg + kl_coef * w_kl * k3) / num_global_tokens

Gradient: flows through ``ratio`` (the unclipped branch where it is selected) and through k3.
w_is is built from old and gen only, so it is a constant weight; w_kl is explicitly detached
(it importance-weights the k3 estimator of KL(pi_theta || pi_ref) for tokens drawn from the
sampler, it is not something to optimise).  old, ref, gen and the advantages are detached
here, whatever the caller passes.  As in ClippedPGLossFn the KL term is not multiplied by w_is.

Token averaging over the global batch: every token of the global batch has weight
1 / num_global_tokens, so the losses of micro-batches called with the same
``num_global_tokens`` (the unmasked-token count of the whole global batch) add up to the loss
of the whole batch, and so do their gradients.  The default, ``mask.sum()``, is right for a
call on the whole batch.  Token-mean metrics use the same denominator, so they too add up
over micro-batches.

Masked positions may hold anything (padding, -inf, NaN): they are replaced by 0 before any
arithmetic, so they touch neither the loss nor the gradient.
"""

from __future__ import annotations

import torch

__all__ = ["policy_loss"]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    gen_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip_c: float | None = None,
    kl_coef: float = 0.01,
    on_policy_kl_weight: bool = True,
    importance_sampling: bool = True,
    is_cap: float | None = None,
    num_global_tokens: int | torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss with k3 KL; returns (scalar loss, metrics of floats).

    Shapes: the logprob tensors and ``mask`` are [N, T]; ``advantages`` is [N] (broadcast over
    every unmasked token of its sample, every assistant token including each turn's eos);
    ``entropy`` (optional) is [N, T], the per-token entropy of the current policy.

    Metrics (detached floats, token means over ``num_global_tokens``):
      ``loss``, ``pg_loss``, ``kl_loss`` (the two parts of the loss);
      ``kl`` (mean k3, unweighted, without the coefficient);
      ``clip_frac_low`` (A < 0 and ratio < 1 - eps_low), ``clip_frac_high`` (A > 0 and
      ratio > 1 + eps_high): tokens whose clip is binding (zero gradient);
      ``dual_clip_frac`` (A < 0 and ratio > c; 0 without dual clip);
      ``ratio_mean``; ``is_weight_mean`` (after the cap; 1 with importance sampling off);
      ``logprob_error``: mean |gen - old|, the sampler / trainer mismatch at the rollout weights;
      ``entropy`` when ``entropy`` is given; ``num_tokens`` (unmasked tokens in this call).
    """
    num_tokens, denom = _check(logprobs, old_logprobs, ref_logprobs, gen_logprobs, advantages, mask,
                               clip_eps_low, clip_eps_high, dual_clip_c, kl_coef, is_cap,
                               num_global_tokens, entropy)
    m = mask.bool()
    dtype = torch.promote_types(logprobs.dtype, torch.float32)

    def clean(x: torch.Tensor) -> torch.Tensor:  # masked slots -> 0 (no NaN/inf reaches autograd)
        return torch.where(m, x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))

    cur = clean(logprobs)
    old, ref, gen = (clean(x.detach()) for x in (old_logprobs, ref_logprobs, gen_logprobs))
    adv = clean(advantages.detach()[:, None].expand_as(logprobs))  # A_i on every token of sample i

    # PPO clip (+ optional dual clip) on token ratios
    ratio = torch.exp(cur - old)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high))
    if dual_clip_c is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip_c), pg)
    # importance weight of the sampler's tokens (old and gen carry no gradient)
    w_is = torch.exp(old - gen) if importance_sampling else torch.ones_like(old)
    if is_cap is not None:
        w_is = w_is.clamp(max=is_cap)
    # k3 KL to the reference, weighted on-policy by pi_theta / pi_gen (a constant weight)
    log_r = ref - cur
    k3 = torch.exp(log_r) - log_r - 1.0
    w_kl = torch.exp(cur - gen).detach() if on_policy_kl_weight else torch.ones_like(cur)

    # token mean over the global batch, written out
    mf = m.to(dtype)
    pg_loss = (w_is * pg * mf).sum() / denom
    kl_loss = kl_coef * (w_kl * k3 * mf).sum() / denom
    loss = pg_loss + kl_loss

    with torch.no_grad():
        def tmean(x: torch.Tensor) -> float:
            return float((x.to(dtype) * mf).sum() / denom)

        metrics = {
            "loss": float(loss),
            "pg_loss": float(pg_loss),
            "kl_loss": float(kl_loss),
            "kl": tmean(k3),
            "clip_frac_low": tmean((adv < 0) & (ratio < 1.0 - clip_eps_low)),
            "clip_frac_high": tmean((adv > 0) & (ratio > 1.0 + clip_eps_high)),
            "dual_clip_frac": tmean((adv < 0) & (ratio > dual_clip_c)) if dual_clip_c is not None else 0.0,
            "ratio_mean": tmean(ratio),
            "is_weight_mean": tmean(w_is),
            "logprob_error": tmean((gen - old).abs()),
            "num_tokens": float(num_tokens),
        }
        if entropy is not None:
            metrics["entropy"] = tmean(clean(entropy.detach()))
    return loss, metrics


def _check(logprobs, old_logprobs, ref_logprobs, gen_logprobs, advantages, mask, clip_eps_low,
           clip_eps_high, dual_clip_c, kl_coef, is_cap, num_global_tokens, entropy):
    """Validate the inputs; return (unmasked tokens here, the denominator of the token mean)."""
    named = {"logprobs": logprobs, "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs,
             "gen_logprobs": gen_logprobs, "advantages": advantages, "mask": mask}
    if entropy is not None:
        named["entropy"] = entropy
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    for name in ("old_logprobs", "ref_logprobs", "gen_logprobs", "mask", "entropy"):
        if name in named and named[name].shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(named[name].shape)}, expected {tuple(logprobs.shape)} "
                             "(the shape of logprobs)")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logprobs.shape[0]}] (one per sample), "
                         f"got shape {tuple(advantages.shape)}")
    for name, x in named.items():
        if name != "mask" and not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be boolean or hold only 0 and 1")
    m = mask.bool()
    for name, x in named.items():
        if name == "mask":
            continue
        bad = ~torch.isfinite(x.detach()) & (m if name != "advantages" else m.any(dim=1))
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} is not finite at {where} (an unmasked position)")
    if not 0.0 <= clip_eps_low < 1.0:
        raise ValueError(f"clip_eps_low must be in [0, 1), got {clip_eps_low}")
    if not clip_eps_high >= 0.0:
        raise ValueError(f"clip_eps_high must be >= 0, got {clip_eps_high}")
    if dual_clip_c is not None and not dual_clip_c > 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (a bound on ratio for negative advantages), got {dual_clip_c}")
    if is_cap is not None and not is_cap > 0.0:
        raise ValueError(f"is_cap must be > 0, got {is_cap}")
    if not kl_coef >= 0.0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    num_tokens = int(m.sum())
    if num_global_tokens is None:
        denom = num_tokens
    else:
        denom = int(num_global_tokens)
        if denom < num_tokens:
            raise ValueError(f"num_global_tokens = {denom} is less than the {num_tokens} unmasked tokens "
                             "of this (micro-)batch; pass the unmasked-token count of the whole global batch")
    return num_tokens, max(denom, 1)  # no tokens at all: the loss is an exact 0 with a zero gradient
