"""The hierarchical reward of HPO (and its ablation baselines) as a pure function.

Every trajectory i of a rollout group carries one value per aligned segment (reference
sentence) s: a quality Q_is (higher is better; MetricX negated lies in -25..0) and a latency
L_is in seconds.  With q* = ``quality_threshold`` and L_max = ``max_latency``:

* ``"sentence"`` (HPO, main):  Lh_i = mean_s g_is,  g_is = min(0, L_is - L_max) if Q_is >= q* else 0
* ``"document"``:              Lh_i = min(0, mean_s L_is - L_max) if mean_s Q_is >= q* else 0
* ``"none"`` (no gate):        Lh_i = mean_s L_is
* ``"seqpo"`` (SeqPO ablation): latency term max(z(mean_s L_is), ``seqpo_floor``), see below

and then, per group of trajectories sharing a ``group_ids`` value,

    r_i = alpha * z(Qbar)_i - beta * z(Lh)_i,      Qbar_i = mean_s Q_is,

with z the group z-score under the population standard deviation (ddof = 0) and no division
when that deviation is 0 (the centred value is used as is; a group whose values are all equal
gets exactly 0).  ``r`` is the advantage, used unchanged.

Sign of the gated term: min(0, L - L_max) is negative for a segment that passed the gate and
is more negative the faster it was, while a failed segment gets 0, the largest possible value.
So -beta * z(Lh) rewards low latency only on segments translated well enough; a bad segment
counts as if it had the worst (>= L_max) latency.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["hierarchical_reward", "group_zscore", "GRANULARITIES", "DEFAULT_QUALITY_THRESHOLD"]

GRANULARITIES = ("sentence", "document", "none", "seqpo")

# HPO's gate: MetricX <= 5, i.e. negated MetricX >= -5 (docs/PAPER.md "threshold q* = -5").
DEFAULT_QUALITY_THRESHOLD = -5.0
# SeqPO ablation floor as docs/PAPER.md gives it: one third of the 1.12 s chunk.
DEFAULT_SEQPO_FLOOR = 1.12 / 3


def group_zscore(values: np.ndarray, group_ids: Sequence[Any]) -> np.ndarray:
    """z-score of ``values`` within each group: (x - mean) / std with the population std.

    When a group's std is 0 there is no division: the centred values are returned (exactly 0
    for a group whose values are all equal, even where the floating-point mean is off by an ulp).
    A std below 1e-12 of the group's magnitude is treated as 0 for the same reason.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(x)
    keys = _group_index(group_ids, len(x))
    for members in keys.values():
        g = x[members]
        if np.ptp(g) == 0.0:
            continue  # constant group: z = 0 exactly
        centred = g - g.mean()
        std = float(np.sqrt(np.mean(centred * centred)))
        if std <= 1e-12 * max(1.0, float(np.abs(g).max())):
            out[members] = centred
        else:
            out[members] = centred / std
    return out


def _group_index(group_ids: Sequence[Any], n: int) -> dict:
    if isinstance(group_ids, (str, bytes)) or not hasattr(group_ids, "__len__"):
        raise TypeError("group_ids must be a sequence with one id per trajectory")
    ids = list(group_ids)
    if len(ids) != n:
        raise ValueError(f"group_ids has {len(ids)} entries but there are {n} trajectories")
    index: dict = {}
    for i, g in enumerate(ids):
        try:
            index.setdefault(g, []).append(i)
        except TypeError as exc:
            raise TypeError(f"group_ids[{i}] = {g!r} is not hashable") from exc
    return {k: np.asarray(v, dtype=np.int64) for k, v in index.items()}


def _segments(name: str, values: Sequence[Sequence[float]]) -> list[np.ndarray]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a sequence (one entry per trajectory) of per-segment lists")
    out = []
    for i, seg in enumerate(values):
        if np.isscalar(seg):
            raise TypeError(f"{name}[{i}] must be a list of per-segment values, got the scalar {seg!r}")
        try:
            arr = np.asarray(seg, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}[{i}] is not a list of numbers: {exc}") from exc
        if arr.ndim != 1:
            raise ValueError(f"{name}[{i}] must be a flat list of per-segment values, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{name}[{i}] has no segments (every trajectory needs at least one)")
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name}[{i}][{bad[0]}] is {arr[bad[0]]} (values must be finite)")
        out.append(arr)
    return out


def hierarchical_reward(
    quality: Sequence[Sequence[float]],
    latency: Sequence[Sequence[float]],
    group_ids: Sequence[Any],
    alpha: float = 1.0,
    beta: float = 0.5,
    quality_threshold: float = DEFAULT_QUALITY_THRESHOLD,
    max_latency: float = 10.0,
    granularity: str = "sentence",
    *,
    seqpo_floor: float = DEFAULT_SEQPO_FLOOR,
    seqpo_clamp: str = "z",
    return_parts: bool = False,
):
    """Per-trajectory reward (= advantage) of HPO, shape [N], float64.

    Args:
        quality: N lists of per-segment quality values (higher is better).
        latency: N lists of per-segment latencies in seconds, paired with ``quality``
            (same number of segments per trajectory).
        group_ids: N hashable ids; z-scores are taken within each id's trajectories
            (HPO: the 16 samples of one window).
        alpha, beta: weights of the quality and latency z-scores.
        quality_threshold: the gate q*; a segment (or, for "document", a trajectory mean)
            passes when Q >= q*.  Default -5 (negated MetricX, i.e. MetricX <= 5).
        max_latency: L_max in seconds (10 s, also the latency of an unaligned segment).
        granularity: "sentence" | "document" | "none" | "seqpo" (see the module docstring).
        seqpo_floor, seqpo_clamp: the SeqPO ablation's lower clamp.  docs/PAPER.md writes the
            latency term as max(z(L), 1.12/3); with ``seqpo_clamp="z"`` (default) that is what is
            computed: r = alpha z(Qbar) - beta max(z(Lbar), floor).  Because a z-score is unitless
            while 1.12/3 s is a third of a chunk, ``seqpo_clamp="latency"`` offers the other
            reading: r = alpha z(Qbar) - beta z(max(Lbar, floor)).
        return_parts: also return a dict of the parts (mean quality, latency term, both z-scores).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if seqpo_clamp not in ("z", "latency"):
        raise ValueError(f"seqpo_clamp must be 'z' or 'latency', got {seqpo_clamp!r}")
    for name, v in (("alpha", alpha), ("beta", beta), ("quality_threshold", quality_threshold),
                    ("max_latency", max_latency), ("seqpo_floor", seqpo_floor)):
        if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    q = _segments("quality", quality)
    lat = _segments("latency", latency)
    if len(q) != len(lat):
        raise ValueError(f"quality has {len(q)} trajectories but latency has {len(lat)}")
    if len(q) == 0:
        raise ValueError("no trajectories")
    for i, (qi, li) in enumerate(zip(q, lat)):
        if qi.size != li.size:
            raise ValueError(f"trajectory {i}: {qi.size} quality values but {li.size} latency values")

    q_mean = np.array([qi.mean() for qi in q])
    l_mean = np.array([li.mean() for li in lat])
    if granularity == "sentence":
        lat_term = np.array([np.where(qi >= quality_threshold, np.minimum(0.0, li - max_latency), 0.0).mean()
                             for qi, li in zip(q, lat)])
    elif granularity == "document":
        lat_term = np.where(q_mean >= quality_threshold, np.minimum(0.0, l_mean - max_latency), 0.0)
    elif granularity == "seqpo" and seqpo_clamp == "latency":
        lat_term = np.maximum(l_mean, seqpo_floor)
    else:  # "none", and "seqpo" clamped after the z-score
        lat_term = l_mean

    z_q = group_zscore(q_mean, group_ids)
    z_l = group_zscore(lat_term, group_ids)
    if granularity == "seqpo" and seqpo_clamp == "z":
        z_l = np.maximum(z_l, seqpo_floor)
    reward = alpha * z_q - beta * z_l
    if return_parts:
        return reward, {"quality": q_mean, "latency": l_mean, "latency_term": lat_term,
                        "z_quality": z_q, "z_latency": z_l}
    return reward
