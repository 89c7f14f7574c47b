"""AL, LAAL, DAL and AP exactly as SimulEval 1.1.4 computes them.

Delays and source lengths are in the log's time unit (ms for speech); lengths of targets are
in latency units. The per-sentence formulas keep SimulEval's order of float operations so the
results agree to the last bit; the corpus score is `statistics.mean` (an exact mean) like theirs.
"""
from __future__ import annotations

from statistics import mean
from typing import Iterable, Optional, Sequence

from .units import reference_length


def average_lagging(delays: Sequence[float], source_length: float, target_length: int) -> float:
    """AL (Ma et al. 2019): mean over t <= tau of d_t - (t-1) * |X| / |Y|, tau = first d_t >= |X|."""
    if delays[0] > source_length:
        return delays[0]
    gamma = target_length / source_length
    total, tau = 0, 0
    for t_minus_1, d in enumerate(delays):
        total += d - t_minus_1 / gamma
        tau = t_minus_1 + 1
        if d >= source_length:
            break
    return total / tau


def length_adaptive_average_lagging(
    delays: Sequence[float], source_length: float, target_length: int
) -> float:
    """LAAL (Papi et al. 2022): AL with |Y| replaced by max(|Y|, |Y*|) (reference vs hypothesis)."""
    return average_lagging(delays, source_length, max(len(delays), target_length))


def differentiable_average_lagging(delays: Sequence[float], source_length: float) -> float:
    """DAL (Arivazhagan et al. 2019), with SimulEval's use of the hypothesis length."""
    target_length = len(delays)
    gamma = target_length / source_length
    total, g_prime_last = 0, 0
    for i_minus_1, g in enumerate(delays):
        g_prime = g if i_minus_1 == 0 else max([g, g_prime_last + 1 / gamma])
        total += g_prime - i_minus_1 / gamma
        g_prime_last = g_prime
    return total / target_length


def average_proportion(delays: Sequence[float], source_length: float, target_length: int) -> float:
    """AP (Cho & Esipova 2016): sum(d) / (|X| * |Y|)."""
    return sum(delays) / (source_length * target_length)


LATENCY_METRICS = ("AL", "LAAL", "DAL", "AP")


def sentence_latency(
    metric: str,
    delays: Sequence[float],
    source_length: float,
    reference: Optional[str],
    unit: str = "word",
    use_ref_len: bool = True,
) -> float:
    """One sentence's `metric` the way SimulEval's scorer picks lengths.

    The target length is the reference length in `unit` when `use_ref_len` and a reference is
    given, else the number of delays. DAL always uses the number of delays.
    """
    if not delays:
        raise ValueError("an instance without delays has no latency (SimulEval skips it)")
    if use_ref_len and reference is not None:
        target_length = reference_length(reference, unit)
    else:
        target_length = len(delays)
    if metric == "AL":
        return average_lagging(delays, source_length, target_length)
    if metric == "LAAL":
        # SimulEval computes gamma = max(len(delays), target_length) / source_length inline
        return length_adaptive_average_lagging(delays, source_length, target_length)
    if metric == "DAL":
        return differentiable_average_lagging(delays, source_length)
    if metric == "AP":
        return average_proportion(delays, source_length, target_length)
    raise ValueError(f"unknown latency metric {metric!r}; expected one of {LATENCY_METRICS}")


def corpus_latency(
    metric: str,
    instances: Iterable,
    unit: str = "word",
    computation_aware: bool = False,
    use_ref_len: bool = True,
) -> float:
    """Mean of `metric` over instances (objects with `delays`, `elapsed`, `source_length`,
    `reference`); instances without delays (or without elapsed, when computation aware) are
    skipped as SimulEval does. Raises ValueError when no instance has any."""
    scores = []
    for number, ins in enumerate(instances):
        timestamps = ins.elapsed if computation_aware else ins.delays
        if not timestamps:
            continue
        try:
            scores.append(sentence_latency(
                metric, timestamps, ins.source_length, ins.reference, unit, use_ref_len))
        except ZeroDivisionError:
            raise ValueError(
                f"instance {number}: {metric} divides by zero (source length 0 or reference "
                f"length 0 in {unit}s)") from None
    if not scores:
        raise ValueError(f"no instance has {'elapsed' if computation_aware else 'delays'}")
    return mean(scores)
