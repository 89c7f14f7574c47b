"""Sampling parameters and the sampler, vectorised over the batch.

Logprobs are those of the sampled token under the distribution it was drawn from: banned ids
removed, then (temperature > 0) scaled by the temperature and cut by top-k / top-p and renormalised.
At temperature 0 the token is the argmax and its logprob is under the unscaled distribution.
"""
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 40
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0                        # 0 = no top-k cut
    stop_token_ids: list[int] | None = None   # None = the model's eos ids
    banned_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def banned_mask(params: list[SamplingParams], vocab_size: int, device) -> torch.Tensor | None:
    rows = [(i, t) for i, p in enumerate(params) for t in p.banned_token_ids if 0 <= t < vocab_size]
    if not rows:
        return None
    mask = torch.zeros(len(params), vocab_size, dtype=torch.bool, device=device)
    idx = torch.tensor(rows, device=device)
    mask[idx[:, 0], idx[:, 1]] = True
    return mask


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]):
    """logits [B, V] -> (token ids [B] int64, logprobs [B] float32)."""
    logits = logits.float()
    B, V = logits.shape
    banned = banned_mask(params, V, logits.device)
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    if all(p.temperature == 0 for p in params):
        logprobs = logits.log_softmax(-1)
        tokens = logits.argmax(-1)
        return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1)
    temperature = torch.tensor([p.temperature for p in params], device=logits.device)
    greedy = temperature == 0
    scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]

    # top-k and top-p on the sorted distribution; rows without a cut keep every id. When every sampled
    # row has the same top-k (RL groups do), torch.topk gives the k largest logits in order: a full
    # sort of the vocabulary was most of a decode step's sampling time. Ties then rank as topk puts
    # them (a valid top-k, decided by the row alone); else by token id (a stable full sort).
    top_k = torch.tensor([p.top_k if p.top_k > 0 else V for p in params], device=logits.device).clamp_(max=V)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device)
    sampled_k = top_k[~greedy].unique()
    width = int(sampled_k) if len(sampled_k) == 1 else V
    if width < V:
        sorted_logits, order = scaled.topk(width, dim=-1)
    else:
        sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(width, device=logits.device)[None, :]
    full_lse = scaled.logsumexp(-1, keepdim=True)
    sorted_probs = (sorted_logits - full_lse).exp()     # of the whole distribution
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    cut = (rank >= top_k[:, None]) | (mass_before >= top_p[:, None])
    cut[:, 0] = False                                   # the most likely token always survives
    cut &= ~greedy[:, None]                             # greedy rows: unscaled, uncut distribution
    sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
    kept_lse = torch.where(greedy[:, None], full_lse, sorted_logits.logsumexp(-1, keepdim=True))
    logprobs_sorted = sorted_logits - kept_lse

    # Exponential race (Gumbel-max): argmax p / E with E ~ Exp(1), one generator per stream. A row
    # draws its own top-k (else V) numbers, so what it samples never depends on the rest of the batch.
    noise = torch.ones_like(logprobs_sorted)
    for i, g in enumerate(generators):
        if not greedy[i]:
            noise[i, :int(top_k[i])].exponential_(generator=g)
    pick = (logprobs_sorted.exp() / noise).argmax(-1)
    pick = torch.where(greedy, 0, pick)
    tokens = order.gather(1, pick[:, None]).squeeze(1)
    logprobs = logprobs_sorted.gather(1, pick[:, None]).squeeze(1)
    return tokens, logprobs
