"""hierarchical_reward: hand-computed cases, a loop reference on random data, and input errors."""

import math
import random
import statistics

import numpy as np
import pytest

from hpo_engine.rl import DEFAULT_QUALITY_THRESHOLD, group_zscore, hierarchical_reward

SQRT15 = math.sqrt(1.5)


# ---------------------------------------------------------------- hand-computed cases

def test_default_threshold_is_metricx_5():
    assert DEFAULT_QUALITY_THRESHOLD == -5.0


def test_segment_below_threshold_gets_no_latency_credit():
    # seg0 passes (-2 >= -5): min(0, 4 - 10) = -6; seg1 fails (-6 < -5): 0 although it was fast;
    # seg2 passes exactly at the threshold but is slower than L_max: min(0, 12 - 10) = 0.
    _, parts = hierarchical_reward([[-2, -6, -5]], [[4, 1, 12]], [0], return_parts=True)
    assert parts["latency_term"][0] == pytest.approx(-2.0)
    assert parts["quality"][0] == pytest.approx(-13 / 3)
    # lower the threshold: seg1 now earns min(0, 1 - 10) = -9
    _, parts = hierarchical_reward([[-2, -6, -5]], [[4, 1, 12]], [0], quality_threshold=-6,
                                   return_parts=True)
    assert parts["latency_term"][0] == pytest.approx((-6 - 9 + 0) / 3)


def test_document_and_sentence_differ_on_constructed_case():
    # T0: one good fast segment and one bad one; its mean quality -4.5 still passes the gate.
    # T1: two mediocre segments (each -4.5, passing) with the same mean latency 3 s.
    quality = [[-1.0, -8.0], [-4.5, -4.5]]
    latency = [[2.0, 4.0], [3.0, 3.0]]
    # sentence: Lh = [(-8 + 0)/2, (-7 - 7)/2] = [-4, -7] -> z = [1, -1]; z(Q) = [0, 0]
    np.testing.assert_allclose(hierarchical_reward(quality, latency, [0, 0]), [-0.5, 0.5])
    # document: Lh = [min(0, 3 - 10)] * 2 = [-7, -7] -> z = 0
    np.testing.assert_array_equal(hierarchical_reward(quality, latency, [0, 0], granularity="document"),
                                  [0.0, 0.0])
    # no gate: mean L = [3, 3]
    np.testing.assert_array_equal(hierarchical_reward(quality, latency, [0, 0], granularity="none"),
                                  [0.0, 0.0])


def test_document_gate_on_trajectory_means():
    # mean Q: [-4, -6]; only T0 passes: Lh = [min(0, 2 - 10), 0] = [-8, 0] -> z = [-1, 1]
    # z(Q) = [1, -1] -> r = [1 + 0.5, -1 - 0.5]
    r = hierarchical_reward([[-3, -5], [-7, -5]], [[1, 3], [1, 3]], ["w", "w"], granularity="document")
    np.testing.assert_allclose(r, [1.5, -1.5])


def test_three_member_group_uses_population_std():
    # mean Q = [-1, -2, -3]: z = [+sqrt(1.5), 0, -sqrt(1.5)] (population std sqrt(2/3));
    # all pass: Lh = [2 - 10, 5 - 10, 8 - 10] = [-8, -5, -2] -> z = [-sqrt(1.5), 0, sqrt(1.5)]
    r = hierarchical_reward([[-1], [-2], [-3]], [[2], [5], [8]], [7, 7, 7])
    np.testing.assert_allclose(r, [1.5 * SQRT15, 0.0, -1.5 * SQRT15], atol=1e-12)
    # a sample std (ddof=1) would have given +-1.5 here
    r = hierarchical_reward([[-1], [-2], [-3]], [[2], [5], [8]], [7, 7, 7], alpha=2.0, beta=1.0)
    np.testing.assert_allclose(r, [3 * SQRT15, 0.0, -3 * SQRT15], atol=1e-12)


def test_lower_latency_is_rewarded_only_when_quality_passes():
    q_good = [[-1.0, -1.0]] * 3
    r = hierarchical_reward(q_good, [[2, 2], [4, 4], [6, 6]], [0, 0, 0])
    assert r[0] > r[1] > r[2]
    # same latencies but the fastest trajectory's segments fail the gate: it becomes the worst
    r = hierarchical_reward([[-9.0, -9.0], [-1.0, -1.0], [-1.0, -1.0]], [[2, 2], [4, 4], [6, 6]],
                            [0, 0, 0], alpha=0.0)
    assert r[0] < r[2] < r[1]


def test_constant_group_gives_zero_and_no_division():
    # 0.1 * 3 has a floating-point mean != 0.1 and a std of ~1e-17: still exactly 0
    r = hierarchical_reward([[0.1]] * 3, [[0.7]] * 3, [1, 1, 1], quality_threshold=0.0)
    np.testing.assert_array_equal(r, np.zeros(3))
    np.testing.assert_array_equal(group_zscore(np.full(7, 0.7), [0] * 7), np.zeros(7))
    # a singleton group has std 0
    r = hierarchical_reward([[-1.0], [-2.0], [-3.0]], [[1.0], [2.0], [3.0]], ["a", "b", "b"])
    assert r[0] == 0.0
    np.testing.assert_allclose(r[1:], [1.5, -1.5])


def test_quality_constant_latency_varies():
    # z(Q) = 0; Lh = [-9, -7] -> z = [-1, 1]; r = -0.5 * z
    r = hierarchical_reward([[-2.0], [-2.0]], [[1.0], [3.0]], [0, 0])
    np.testing.assert_allclose(r, [0.5, -0.5])


def test_groups_are_independent_and_need_not_be_contiguous():
    q = [[-1.0], [-20.0], [-3.0], [-4.0], [-2.0]]
    lat = [[1.0], [9.0], [3.0], [2.0], [5.0]]
    g = ["a", "b", "a", "b", "a"]
    r = hierarchical_reward(q, lat, g)
    r_a = hierarchical_reward([q[0], q[2], q[4]], [lat[0], lat[2], lat[4]], [0, 0, 0])
    r_b = hierarchical_reward([q[1], q[3]], [lat[1], lat[3]], [0, 0])
    np.testing.assert_allclose(r[[0, 2, 4]], r_a)
    np.testing.assert_allclose(r[[1, 3]], r_b)
    assert np.all(r_b != 0)


def test_seqpo_baseline():
    # mean Q = [-2, -4] -> z = [1, -1]; mean L = [1, 3] -> z = [-1, 1]
    # clamp on z (docs/PAPER.md): max(z, 1.12/3) = [0.3733.., 1]
    r = hierarchical_reward([[-2], [-4]], [[1], [3]], [0, 0], granularity="seqpo")
    np.testing.assert_allclose(r, [1 - 0.5 * 1.12 / 3, -1 - 0.5])
    # clamp on the latency: mean L = [0.1, 0.2] -> both floored at 0.3733.. -> z(L) = 0
    r = hierarchical_reward([[-2], [-4]], [[0.1], [0.2]], [0, 0], granularity="seqpo",
                            seqpo_clamp="latency")
    np.testing.assert_allclose(r, [1.0, -1.0])
    r = hierarchical_reward([[-2], [-4]], [[0.1], [0.2]], [0, 0], granularity="none")
    np.testing.assert_allclose(r, [1.5, -1.5])


# ---------------------------------------------------------------- loop reference, random inputs

def _ref_z(xs):
    mu = statistics.fmean(xs)
    sd = statistics.pstdev(xs)
    return [0.0 if sd == 0 else (x - mu) / sd for x in xs]


def _reference(quality, latency, groups, alpha, beta, thr, lmax, gran):
    n = len(quality)
    qbar, lterm = [], []
    for i in range(n):
        qs, ls = quality[i], latency[i]
        qbar.append(sum(qs) / len(qs))
        if gran == "sentence":
            acc = 0.0
            for qv, lv in zip(qs, ls):
                if qv >= thr and lv < lmax:
                    acc += lv - lmax
            lterm.append(acc / len(qs))
        elif gran == "document":
            mean_l = sum(ls) / len(ls)
            lterm.append(mean_l - lmax if (qbar[-1] >= thr and mean_l < lmax) else 0.0)
        else:
            lterm.append(sum(ls) / len(ls))
    out = [0.0] * n
    for g in set(groups):
        idx = [i for i in range(n) if groups[i] == g]
        zq = _ref_z([qbar[i] for i in idx])
        zl = _ref_z([lterm[i] for i in idx])
        for k, i in enumerate(idx):
            zlk = max(zl[k], 1.12 / 3) if gran == "seqpo" else zl[k]
            out[i] = alpha * zq[k] - beta * zlk
    return out


@pytest.mark.parametrize("gran", ["sentence", "document", "none", "seqpo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_on_random_data(gran, seed):
    rng = random.Random(seed * 10 + len(gran))
    sizes = [1, 3, 5, 7, 16]
    groups, quality, latency = [], [], []
    for gid, size in enumerate(sizes):
        for _ in range(size):
            nseg = rng.randint(1, 9)
            groups.append(f"g{gid}")
            quality.append([rng.uniform(-12, 0) for _ in range(nseg)])
            latency.append([rng.uniform(0, 13) for _ in range(nseg)])
    order = list(range(len(groups)))
    rng.shuffle(order)  # interleave the groups
    groups = [groups[i] for i in order]
    quality = [quality[i] for i in order]
    latency = [latency[i] for i in order]
    alpha, beta, thr = rng.uniform(0.5, 2), rng.uniform(0.1, 1), rng.uniform(-7, -3)
    got = hierarchical_reward(quality, latency, groups, alpha=alpha, beta=beta, quality_threshold=thr,
                              granularity=gran)
    want = _reference(quality, latency, groups, alpha, beta, thr, 10.0, gran)
    assert got.shape == (len(groups),) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the data exercise the gate both ways
    flat = [(q, l) for qs, ls in zip(quality, latency) for q, l in zip(qs, ls)]
    assert any(q >= thr and l < 10 for q, l in flat) and any(q < thr for q, l in flat)


def test_granularities_differ_on_random_data():
    rng = np.random.default_rng(3)
    quality = [list(rng.uniform(-10, 0, size=5)) for _ in range(8)]
    latency = [list(rng.uniform(0, 12, size=5)) for _ in range(8)]
    out = {g: hierarchical_reward(quality, latency, [0] * 8, granularity=g)
           for g in ("sentence", "document", "none", "seqpo")}
    for a in out:
        for b in out:
            if a < b:
                assert not np.allclose(out[a], out[b]), (a, b)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("quality, latency, groups, match", [
    ([[-1.0], [-2.0]], [[1.0]], [0, 0], "2 trajectories but latency has 1"),
    ([[-1.0, -2.0]], [[1.0]], [0], "trajectory 0: 2 quality values but 1 latency"),
    ([[-1.0], []], [[1.0], []], [0, 0], r"quality\[1\] has no segments"),
    ([[-1.0, float("nan")]], [[1.0, 2.0]], [0], r"quality\[0\]\[1\] is nan"),
    ([[-1.0]], [[float("inf")]], [0], r"latency\[0\]\[0\] is inf"),
    ([[-1.0], [-2.0]], [[1.0], [2.0]], [0], "group_ids has 1 entries"),
    ([], [], [], "no trajectories"),
])
def test_bad_input_errors(quality, latency, groups, match):
    with pytest.raises(ValueError, match=match):
        hierarchical_reward(quality, latency, groups)


def test_bad_arguments():
    with pytest.raises(ValueError, match="granularity"):
        hierarchical_reward([[-1.0]], [[1.0]], [0], granularity="word")
    with pytest.raises(ValueError, match="seqpo_clamp"):
        hierarchical_reward([[-1.0]], [[1.0]], [0], granularity="seqpo", seqpo_clamp="raw")
    with pytest.raises(TypeError, match="scalar"):
        hierarchical_reward([-1.0, -2.0], [[1.0], [2.0]], [0, 0])
    with pytest.raises(ValueError, match="beta"):
        hierarchical_reward([[-1.0]], [[1.0]], [0], beta=float("nan"))
    with pytest.raises(TypeError, match="hashable"):
        hierarchical_reward([[-1.0]], [[1.0]], [[0]])
