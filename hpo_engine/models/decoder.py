"""The decoder-only LLM (Llama, Qwen2/2.5, Qwen3), read top to bottom.

Tokens come packed: [T] ids of B sequences laid end to end, no padding. Two attention modes share
every weight:
  - paged (inference): `PagedBatch` given; new K/V are stored into the per-layer paged cache and the
    queries attend through it (`hpo_engine.kernels`);
  - full (training): no cache; causal attention within each packed sequence (`cu_seqlens`), autograd on.
Parameter names follow Hugging Face (`model.layers.3.self_attn.q_proj.weight`), so a checkpoint's
state dict loads as is.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpo_engine.config import ModelConfig, rope_inv_freq
from hpo_engine.kernels import linear, paged_attention, rms_norm, rope, store_kv


@dataclass
class PagedBatch:
    """Where the packed tokens of one forward live in the paged KV cache (docs/DESIGN.md kernels contract)."""
    slot_mapping: torch.Tensor    # [T] int64: cache slot of each new token
    block_table: torch.Tensor     # [B, max_blocks] int32
    seq_lens: torch.Tensor        # [B] int32: KV length per sequence, new tokens included
    cu_seqlens_q: torch.Tensor    # [B+1] int32: new-token offsets
    kv_caches: list               # per layer (k_cache, v_cache), each [num_blocks, block_size, Hkv, D]
    backends: tuple[str | None, str | None] = (None, None)   # (attention, store_kv) chosen once per
                                  # engine (hpo_engine.kernels); None: each call decides


class Linear(nn.Linear):
    """nn.Linear whose inference forward at decode batch sizes takes the CPU small-batch kernel
    (`hpo_engine.kernels.linear`: F.linear elsewhere, and whenever autograd records)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # float32 math, rounded to x's dtype before the weight (kernels.rms_norm_ref; one C++ call at inference)
        return rms_norm(x, self.weight, self.eps)


def apply_rope(x, cos, sin):
    """x [T, H, D]; cos/sin [T, D] (halves repeated, as Hugging Face's rotate_half layout): x * cos +
    rotate_half(x) * sin (kernels.rope_ref). At inference on CPU it rotates x in place."""
    return rope(x, cos, sin)


def causal_varlen_attention(q, k, v, cu_seqlens, scale):
    """Full-sequence causal attention within each packed sequence. q [T, Hq, D], k/v [T, Hkv, D]."""
    T, Hq, _ = q.shape
    seq_id = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=q.device), cu_seqlens.diff())
    idx = torch.arange(T, device=q.device)
    mask = (seq_id[:, None] == seq_id[None, :]) & (idx[None, :] <= idx[:, None])
    groups = Hq // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.scale = c.head_dim ** -0.5
        self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache=None, paged=None, cu_seqlens=None):
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if paged is not None:
            k_cache, v_cache = kv_cache
            attention_backend, store_backend = paged.backends
            store_kv(k, v, k_cache, v_cache, paged.slot_mapping, backend=store_backend)
            o = paged_attention(q, k_cache, v_cache, paged.block_table, paged.seq_lens,
                                paged.cu_seqlens_q, scale=self.scale, backend=attention_backend)
        else:
            o = causal_varlen_attention(q, k, v, cu_seqlens, self.scale)
        return self.o_proj(o.reshape(T, -1))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, kv_cache=None, paged=None, cu_seqlens=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, paged, cu_seqlens)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def embed(self, input_ids, embeds=None, placeholder_mask=None):
        """Token embeddings [T, H]; rows where `placeholder_mask` is set come from `embeds` in order."""
        x = self.model.embed_tokens(input_ids)
        if embeds is not None:
            x = x.masked_scatter(placeholder_mask[:, None], embeds.to(x.dtype))
        return x

    def rope(self, positions, dtype):
        # Outer product in float32, as Hugging Face computes it, then cast to the activation dtype.
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rotate_keys(self, k: torch.Tensor, shift: int) -> torch.Tensor:
        """Cached keys [N, Hkv, D] roped at positions p -> the same keys roped at p + shift (the KV
        window slides kept keys down after evicting old turns; computed in float64)."""
        angle = shift * self.inv_freq.double()
        emb = torch.cat((angle, angle))[None]
        return apply_rope(k.double(), emb.cos(), emb.sin()).to(k.dtype)

    def forward(self, x, positions, paged: PagedBatch | None = None, cu_seqlens=None):
        """x [T, H] packed input embeddings, positions [T] -> final hidden states [T, H].

        Paged mode needs `paged`; full mode needs `cu_seqlens` [B+1] (default: one sequence).
        """
        if paged is None and cu_seqlens is None:
            cu_seqlens = torch.tensor([0, x.shape[0]], device=x.device)
        cos, sin = self.rope(positions, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, paged.kv_caches[i] if paged is not None else None, paged, cu_seqlens)
        return self.model.norm(x)

    def logits(self, hidden):
        return self.lm_head(hidden)
