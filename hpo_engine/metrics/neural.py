"""Optional neural quality scorers that load from a local path and never download.

* `MetricXScorer`: MetricX-24 (an mT5 regression model; Juraska et al. 2024) run through
  transformers. Input "source: S candidate: H reference: R" without the final EOS; the score is
  the decoder's first-step logit of token 250089 clamped to [0, 25] (lower is better; HPO uses
  its negation as quality).
* `CometScorer`: COMET / xCOMET checkpoints through the `unbabel-comet` package.

Both batch their inputs and raise FileNotFoundError naming the missing path.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

METRICX_SCORE_TOKEN = 250089  # "<extra_id_10>" in the mT5 vocabulary


def _require_path(path: str, what: str) -> str:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            f"{what} checkpoint not found at {path!r}; these scorers only load local files "
            "(no downloads): pass the path of a downloaded checkpoint"
        )
    return path


class MetricXScorer:
    """MetricX-24 from a local Hugging Face folder (model weights + its mT5 tokenizer)."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 8,
                 max_input_length: int = 1536, score_token_id: int = METRICX_SCORE_TOKEN):
        _require_path(path, "MetricX")
        import torch
        from transformers import AutoTokenizer, MT5ForConditionalGeneration

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = MT5ForConditionalGeneration.from_pretrained(path, local_files_only=True)
        self.model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.max_input_length, self.score_token_id = max_input_length, score_token_id

    @staticmethod
    def format_input(hypothesis: str, reference: Optional[str], source: Optional[str]) -> str:
        """MetricX-24 hybrid input text (reference-free when `reference` is None)."""
        text = f"source: {source or ''} candidate: {hypothesis}"
        return text if reference is None else f"{text} reference: {reference}"

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids without the trailing EOS (MetricX drops it), truncated."""
        ids = self.tokenizer(list(texts), max_length=self.max_input_length, truncation=True)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [x[:-1] if x and x[-1] == eos else x for x in ids]

    def score(self, hypotheses: Sequence[str], references: Optional[Sequence[str]] = None,
              sources: Optional[Sequence[str]] = None) -> List[float]:
        """Per-segment MetricX error scores in [0, 25] (lower is better)."""
        n = len(hypotheses)
        for name, other in (("references", references), ("sources", sources)):
            if other is not None and len(other) != n:
                raise ValueError(f"{n} hypotheses but {len(other)} {name}")
        texts = [self.format_input(h, None if references is None else references[i],
                                   None if sources is None else sources[i])
                 for i, h in enumerate(hypotheses)]
        torch = self.torch
        pad = self.tokenizer.pad_token_id or 0
        out: List[float] = []
        for b in range(0, n, self.batch_size):
            ids = self.encode(texts[b:b + self.batch_size])
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, x in enumerate(ids):
                input_ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
                mask[i, :len(x)] = 1
            decoder_input_ids = torch.zeros((len(ids), 1), dtype=torch.long)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device),
                                    decoder_input_ids=decoder_input_ids.to(self.device)).logits
            out += logits[:, 0, self.score_token_id].clamp(0, 25).float().cpu().tolist()
        return out


class CometScorer:
    """COMET or xCOMET from a local `.ckpt` (the `unbabel-comet` package must be installed)."""

    def __init__(self, path: str, batch_size: int = 16, gpus: int = 0):
        _require_path(path, "COMET")
        try:
            from comet import load_from_checkpoint
        except ImportError:
            raise RuntimeError(
                "COMET / xCOMET scoring needs the 'unbabel-comet' package (pip install unbabel-comet)"
            ) from None
        self.model = load_from_checkpoint(path)
        self.batch_size, self.gpus = batch_size, gpus

    def score(self, hypotheses: Sequence[str], references: Optional[Sequence[str]],
              sources: Sequence[str]) -> List[float]:
        """Per-segment COMET scores (higher is better)."""
        if len(sources) != len(hypotheses) or (references is not None and len(references) != len(hypotheses)):
            raise ValueError("hypotheses, references and sources must have the same length")
        data = [{"src": s, "mt": h} | ({} if references is None else {"ref": references[i]})
                for i, (s, h) in enumerate(zip(sources, hypotheses))]
        output = self.model.predict(data, batch_size=self.batch_size, gpus=self.gpus,
                                    progress_bar=False)
        return list(output.scores)
