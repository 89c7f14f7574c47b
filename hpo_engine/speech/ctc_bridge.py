"""CTC bridge: encoder frames -> rows of the LLM's own embedding table, so speech reads like text.

    frames [T, d_enc] --stack k (k x 20 ms)--> LayerNorm --> MLP --> logits [ceil(T/k), 1 + V]
        class 0 is CTC's blank; class j >= 1 is the LLM token `vocab_ids[j - 1]`
    CTC collapse, carried across chunks: a frame emits when its best class is not blank and differs
        from the previous frame's best class (the previous chunk's last frame included)
    an emitted row = sum_j q_j * E[vocab_ids[j]], q = that frame's posterior over its `top_k` best
        non-blank classes, renormalised (E: the LLM's input embedding table)

A chunk thus gives a variable number of rows (often none in a pause), each a convex mix of text token
embeddings: the LLM reads the English as it reads text, and the bridge is trained with a CTC loss on
encoder frames and the transcript's LLM token ids alone, with no backward pass through the LLM.
Why: a free projector trained through the LLM collapsed (the LLM learned to ignore it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .projector import stack_frames

BLANK = 0


@dataclass(frozen=True)
class CTCBridgeConfig:
    d_encoder: int = 384
    d_llm: int = 896
    stack: int = 2                       # encoder frames per CTC frame (2 x 20 ms = 40 ms)
    d_hidden: int = 512                  # 1024 measured 1.65x slower to train on this CPU
    num_layers: int = 2                  # hidden layers of the MLP
    top_k: int = 8                       # non-blank classes mixed into an emitted row
    vocab_ids: tuple[int, ...] = field(default_factory=tuple)   # LLM token id of each non-blank class

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vocab_ids"] = list(self.vocab_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CTCBridgeConfig":
        return cls(**{**d, "vocab_ids": tuple(d.get("vocab_ids", ()))})


@dataclass
class CTCState:
    """Per stream: the best class of the last frame seen (collapse across chunk boundaries)."""
    last_class: int = BLANK


class CTCBridge(nn.Module):
    def __init__(self, cfg: CTCBridgeConfig):
        super().__init__()
        if not cfg.vocab_ids:
            raise ValueError("CTCBridgeConfig.vocab_ids is empty: the bridge needs the LLM token ids it predicts")
        self.cfg = cfg
        d_in = cfg.stack * cfg.d_encoder
        layers: list[nn.Module] = [nn.LayerNorm(d_in)]
        for i in range(cfg.num_layers):
            layers += [nn.Linear(d_in if i == 0 else cfg.d_hidden, cfg.d_hidden), nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.d_hidden, 1 + len(cfg.vocab_ids))
        self.register_buffer("vocab", torch.tensor(cfg.vocab_ids, dtype=torch.long), persistent=False)
        # E[vocab_ids]: set from the LLM by `attach_embeddings` (not saved: it is the LLM's own table)
        self.register_buffer("embeddings", torch.zeros(0, cfg.d_llm), persistent=False)

    def attach_embeddings(self, embedding_table: torch.Tensor) -> "CTCBridge":
        """Take the rows of the LLM's input embedding table [vocab, d_llm] that the classes name."""
        if embedding_table.shape[1] != self.cfg.d_llm:
            raise ValueError(f"embedding width {embedding_table.shape[1]} != bridge d_llm {self.cfg.d_llm}")
        if int(self.vocab.max()) >= embedding_table.shape[0]:
            raise ValueError(f"bridge predicts token id {int(self.vocab.max())}, outside the LLM's "
                             f"{embedding_table.shape[0]}-row embedding table")
        self.embeddings = embedding_table.detach()[self.vocab.to(embedding_table.device)].clone()
        return self

    def attach_llm(self, embedding_table: torch.Tensor, tokenizer=None) -> "CTCBridge":
        """The speech adapters' common hook (the tokenizer is the transcriber's concern)."""
        return self.attach_embeddings(embedding_table)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [..., T, d_encoder] -> CTC logits [..., ceil(T / stack), 1 + V]."""
        return self.head(self.mlp(stack_frames(frames, self.cfg.stack)))

    def new_state(self) -> CTCState:
        return CTCState()

    def chunk_rows(self, frames: torch.Tensor, state: CTCState, final: bool = False) -> torch.Tensor:
        """One chunk's encoder frames [T, d_encoder] -> its emitted rows [n, d_llm] (n may be 0). CTC
        emits as it goes: the stream's last chunk (`final`) is like any other."""
        if not len(self.embeddings):
            raise RuntimeError("CTCBridge.attach_embeddings was not called")
        logits = self(frames).float()
        best = logits.argmax(-1)
        emit = emitting(best, state.last_class)
        if len(best):
            state.last_class = int(best[-1])
        if not bool(emit.any()):
            return self.embeddings.new_zeros(0, self.cfg.d_llm)
        scores, classes = logits[emit][:, 1:].topk(min(self.cfg.top_k, len(self.cfg.vocab_ids)), dim=-1)
        weights = scores.softmax(-1).to(self.embeddings.dtype)          # renormalised over the kept classes
        return torch.einsum("nk,nkd->nd", weights, self.embeddings[classes])

    def greedy_ids(self, frames: torch.Tensor) -> list[int]:
        """The collapsed best path as LLM token ids (what the bridge 'hears'; for checks and reports)."""
        best = self(frames).argmax(-1)
        return [self.cfg.vocab_ids[c - 1] for c in best[emitting(best, BLANK)].tolist()]


def emitting(best: torch.Tensor, last_class: int) -> torch.Tensor:
    """CTC's collapse rule: frames [T] whose best class is not blank and differs from the frame before
    (`last_class`: the best class of the frame before the first)."""
    previous = torch.cat([best.new_tensor([last_class]), best[:-1]])
    return (best != BLANK) & (best != previous)


def ctc_loss(bridge: CTCBridge, frames: torch.Tensor, frame_lengths: torch.Tensor, targets: list[list[int]],
             class_of: dict[int, int]) -> torch.Tensor:
    """Mean CTC loss per target token. frames [B, T, d_encoder] zero-padded, frame_lengths [B] encoder
    frames; targets: each talk's transcript as LLM token ids; class_of: LLM id -> class (ids absent from
    the bridge's vocabulary are dropped from the target)."""
    logp = bridge(frames).float().log_softmax(-1).transpose(0, 1)      # [T', B, C]
    labels = [[class_of[t] for t in ids if t in class_of] for ids in targets]
    in_lengths = (frame_lengths + bridge.cfg.stack - 1) // bridge.cfg.stack
    flat = torch.tensor([c for seq in labels for c in seq], dtype=torch.long)
    out_lengths = torch.tensor([len(seq) for seq in labels], dtype=torch.long)
    loss = F.ctc_loss(logp, flat, in_lengths, out_lengths, blank=BLANK, reduction="sum", zero_infinity=True)
    return loss / out_lengths.sum().clamp(min=1)
