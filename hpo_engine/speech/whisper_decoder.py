"""Whisper's text decoder, read top to bottom: greedy transcription of encoder frames.

    tokens [n] -> embed + positions -> L x (pre-LN self-attention (causal, cached),
                                           pre-LN cross-attention over the encoder frames,
                                           pre-LN GELU MLP) -> LN -> logits = h @ embed.T (tied)

Weights are Hugging Face `WhisperForConditionalGeneration`'s `model.decoder.*` (whisper_ct2.py converts
the offline CTranslate2 file to those names); tests/test_transcriber.py checks the logits against
transformers' decoder. One stream, batch 1: each call of `transcribe` is a short prefill of the prompt
and a handful of greedy steps, so plain tensors and a list of per-layer caches are all it needs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpo_engine.kernels import linear

EOT = 50256                  # <|endoftext|>, both English-only and multilingual vocabularies
SOT_EN = 50257               # <|startoftranscript|> of the .en vocabulary (multilingual: 50258)
NO_TIMESTAMPS_EN = 50362     # <|notimestamps|> of the .en vocabulary (multilingual: 50363)
NO_SPEECH_EN = 50361         # <|nocaptions|> (<|nospeech|>): its probability after SOT says "silence"


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 51864
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    d_ffn: int = 1536
    max_positions: int = 448
    sot: int = SOT_EN
    no_timestamps: int = NO_TIMESTAMPS_EN
    no_speech: int = NO_SPEECH_EN
    eot: int = EOT

    @classmethod
    def from_whisper(cls, cfg: dict) -> "DecoderConfig":
        english = cfg["vocab_size"] == 51864
        return cls(vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], n_heads=cfg["decoder_attention_heads"],
                   n_layers=cfg["decoder_layers"], d_ffn=cfg["decoder_ffn_dim"],
                   max_positions=cfg["max_target_positions"], sot=SOT_EN if english else SOT_EN + 1,
                   no_timestamps=NO_TIMESTAMPS_EN if english else NO_TIMESTAMPS_EN + 1,
                   no_speech=NO_SPEECH_EN if english else NO_SPEECH_EN + 1)

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    """Multi-head attention; the key projection has no bias (Whisper's)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def heads(self, x: torch.Tensor) -> torch.Tensor:          # [n, d] -> [heads, n, d / heads]
        return x.view(x.shape[0], self.n_heads, -1).transpose(0, 1)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        # causal with a cache: query i sits at position len(k) - len(x) + i
        # Written out rather than F.scaled_dot_product_attention: at these sizes (a few queries against
        # up to 13 s of frames) torch's CPU SDPA cost 1.3-3x the three ops (bench/RESULTS.md, 2026-12-03).
        q = self.heads(self.q_proj(x))
        scores = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5
        if causal and x.shape[0] > 1:
            n, m = x.shape[0], k.shape[1]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool, device=x.device).tril(m - n), float("-inf"))
        out = scores.softmax(-1) @ v
        return self.out_proj(out.transpose(0, 1).reshape(x.shape[0], -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn, self.self_attn_layer_norm = Attention(d, cfg.n_heads), nn.LayerNorm(d)
        self.encoder_attn, self.encoder_attn_layer_norm = Attention(d, cfg.n_heads), nn.LayerNorm(d)
        self.fc1, self.fc2, self.final_layer_norm = nn.Linear(d, cfg.d_ffn), nn.Linear(cfg.d_ffn, d), nn.LayerNorm(d)

    def forward(self, x, cache: list[torch.Tensor], cross: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)
        if cache:
            k, v = torch.cat([cache[0], k], 1), torch.cat([cache[1], v], 1)
        cache[:] = [k, v]
        x = x + self.self_attn(h, k, v, causal=True)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), *cross, causal=False)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperTextDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    def load_hf_state_dict(self, sd: dict[str, torch.Tensor]) -> "WhisperTextDecoder":
        """`model.decoder.*` of a WhisperForConditionalGeneration state dict (other keys ignored)."""
        p = "model.decoder."
        self.load_state_dict({k[len(p):]: t for k, t in sd.items() if k.startswith(p)}, strict=True)
        return self

    def cross_keys_values(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encoder frames [T, d] -> each layer's cross-attention keys and values (once per transcription)."""
        return [layer.encoder_attn.keys_values(frames) for layer in self.layers]

    def hidden(self, tokens: torch.Tensor, start: int, caches: list[list[torch.Tensor]],
               cross: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """tokens [n] at positions start.. -> final hidden states [n, d]; `caches` (one list per layer) grow by n."""
        x = self.embed_tokens(tokens) + self.embed_positions.weight[start:start + len(tokens)]
        for layer, cache, kv in zip(self.layers, caches, cross):
            x = layer(x, cache, kv)
        return self.layer_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # the tied head reads 51,864 x d weights per call (80 MB in fp32 for tiny): only the rows needed
        return linear(hidden, self.embed_tokens.weight)

    def forward(self, tokens: torch.Tensor, start: int, caches: list[list[torch.Tensor]],
                cross: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """tokens [n] at positions start.. -> logits [n, vocab]; `caches` (one list per layer) grow by n."""
        return self.logits(self.hidden(tokens, start, caches, cross))

    @torch.inference_mode()
    def transcribe(self, frames: torch.Tensor, prefix: list[int] = (), max_new_tokens: int = 64,
                   repeat_ngram: int = 4, no_speech_threshold: float = 0.6, draft: list[int] = ()) -> list[int]:
        """Greedy continuation of `prefix` (text token ids, forced) over encoder frames [T, d]: the new
        text token ids, without EOT. Nothing when the probability of <|nospeech|> after SOT exceeds
        `no_speech_threshold` (Whisper's silence test: it otherwise hallucinates "you" in silence).
        Stops at EOT, after `max_new_tokens`, or when the last `repeat_ngram` tokens already occurred in
        prefix + output (a decoder that has run out of speech loops over what it heard); the repeated
        n-gram is dropped.

        `draft`: a guess of the output (a streaming transcriber's previous hypothesis). Its tokens are
        fed with the step before them and kept while greedy decoding picks them, so a right guess of n
        tokens costs one forward instead of n; the output is greedy decoding's either way (the head
        reads its 51,864 rows once for all the rows of a forward)."""
        prompt = [self.cfg.sot, self.cfg.no_timestamps, *prefix]
        room = self.cfg.max_positions - len(prompt)
        if room <= 0:
            raise ValueError(f"prefix of {len(prefix)} tokens leaves no room in {self.cfg.max_positions} positions")
        limit = min(max_new_tokens, room)
        cross = self.cross_keys_values(frames)
        caches: list[list[torch.Tensor]] = [[] for _ in self.layers]
        guess = list(draft[:limit])           # fed, not yet confirmed: its rows sit at the end of the caches
        h = self.hidden(torch.tensor(prompt + guess, device=frames.device), 0, caches, cross)
        if float(self.logits(h[:1])[0].softmax(-1)[self.cfg.no_speech]) > no_speech_threshold:
            return []
        predicted = list(self.logits(h[len(prompt) - 1:]))      # row i predicts out[len(out) + i]
        seen, out = list(prefix), []
        while len(out) < limit:
            token = int(predicted.pop(0)[: self.cfg.eot + 1].argmax())      # text tokens and EOT only
            if token == self.cfg.eot:
                break
            out.append(token)
            seen.append(token)
            if repeat_ngram and len(seen) > repeat_ngram and _repeats(seen, repeat_ngram):
                del out[-repeat_ngram:]
                break
            if guess and guess[0] == token:       # guessed right: its row's prediction comes next
                guess.pop(0)
                continue
            if guess:                             # wrong from here: drop the rows fed for the rest
                for cache in caches:
                    cache[:] = [t[:, :-len(guess)] for t in cache]
            if len(out) == limit:
                break
            guess = list(draft[len(out):limit]) if list(draft[:len(out)]) == out else []
            h = self.hidden(torch.tensor([token, *guess], device=frames.device), len(prompt) + len(out) - 1,
                            caches, cross)
            predicted = list(self.logits(h))
        return out


def _repeats(seq: list[int], n: int) -> bool:
    """Whether seq's last n tokens occur earlier in seq."""
    tail = seq[-n:]
    return any(seq[i:i + n] == tail for i in range(len(seq) - n))
