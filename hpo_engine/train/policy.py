"""The trainer's side of the policy: packed full-sequence forwards that recompute token logprobs.

Only the rows that predict an assistant token go through the LM head (a 150k vocabulary times every
prompt and speech position would dominate memory). Logprobs are taken under the distribution the
sampler drew from (banned ids removed, logits / temperature), so at temperature 1 without top-k /
top-p truncation they equal the runtime's sampling logprobs.
"""
from __future__ import annotations

import torch

from hpo_engine.train.rollout import Sample


def micro_batches(samples: list[Sample], indices, max_tokens: int) -> list[list[int]]:
    """Greedy token packing in the given order; a sample longer than `max_tokens` goes alone."""
    batches, current, used = [], [], 0
    for i in indices:
        n = samples[i].num_tokens
        if current and used + n > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(int(i))
        used += n
    if current:
        batches.append(current)
    return batches


def forward(model, x, positions, cu_seqlens, checkpointing: bool = False):
    """`model(x, positions, cu_seqlens=...)`, optionally recomputing each layer in the backward pass
    (activation memory of one layer instead of all)."""
    if not (checkpointing and torch.is_grad_enabled()):
        return model(x, positions, cu_seqlens=cu_seqlens)
    from torch.utils.checkpoint import checkpoint
    cos, sin = model.rope(positions, x.dtype)
    for layer in model.model.layers:
        x = checkpoint(layer, x, cos, sin, None, None, cu_seqlens, use_reentrant=False)
    return model.model.norm(x)


def assistant_logprobs(model, samples: list[Sample], banned: torch.Tensor | None = None,
                       temperature: float = 1.0, entropy: bool = False, checkpointing: bool = False,
                       embed_speech=None):
    """One packed forward of `samples` -> (logprobs, entropies or None), each a list of [n_i] tensors:
    for every assistant token of sample i, its logprob given the dialogue before it.
    `embed_speech(rows) -> [n, H]` (the trainable projector) turns speech rows into embeddings."""
    device = model.inv_freq.device
    ids = torch.cat([s.input_ids for s in samples]).to(device)
    speech = torch.cat([s.speech_mask for s in samples]).to(device)
    embeds = torch.cat([s.embeds for s in samples]).to(device)
    if embed_speech is not None:     # every sample holds whole chunks: rows stay grouped per embedding
        embeds = embed_speech(embeds)
    lengths = [s.num_tokens for s in samples]
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0)
    targets = torch.cat([s.assistant_mask for s in samples]).nonzero().squeeze(1).to(device)
    hidden = forward(model, model.embed(ids, embeds, speech), positions, cu, checkpointing)
    logits = model.logits(hidden[targets - 1]).float()      # row t-1 predicts token t (never t = 0)
    if temperature != 1.0:
        logits = logits / temperature
    if banned is not None:
        logits = logits.masked_fill(banned.to(device), float("-inf"))
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(1, ids[targets][:, None]).squeeze(1)
    counts = [int(s.assistant_mask.sum()) for s in samples]
    ent = None
    if entropy:
        with torch.no_grad():
            p = logp_all.exp()
            ent = -(p * torch.where(p > 0, logp_all, torch.zeros_like(logp_all))).sum(-1)
            ent = list(ent.split(counts))
    return list(logp.split(counts)), ent


def pad_rows(rows: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged [n_i] rows -> ([N, W] zero-padded, [N, W] bool mask)."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.zeros(len(rows), width, dtype=rows[0].dtype if rows else torch.float32,
                      device=rows[0].device if rows else "cpu")
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=out.device)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
        mask[i, :len(r)] = True
    return out, mask


@torch.no_grad()
def all_assistant_logprobs(model, samples, banned, temperature, max_tokens, embed_speech=None) -> list[torch.Tensor]:
    """Logprobs (no grad) of every sample's assistant tokens, micro-batched."""
    out: list[torch.Tensor | None] = [None] * len(samples)
    for mb in micro_batches(samples, range(len(samples)), max_tokens):
        lps, _ = assistant_logprobs(model, [samples[i] for i in mb], banned, temperature,
                                    embed_speech=embed_speech)
        for i, lp in zip(mb, lps):
            out[i] = lp.detach()
    return out
