"""policy_loss: hand-computed cases, a per-token loop reference, KL gradient, micro-batch invariance."""

import math

import pytest
import torch

from hpo_engine.rl import policy_loss

LN2 = math.log(2.0)
F64 = torch.float64


def _t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------- hand-computed cases

def test_on_policy_loss_is_minus_mean_advantage_over_tokens():
    z = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    mask = _t([[1, 1, 0], [1, 0, 0]]).bool()
    adv = _t([2.0, -1.0])
    loss, met = policy_loss(z, z.detach(), z.detach(), z.detach(), adv, mask)
    # tokens: A = 2, 2, -1 -> loss = -(2 + 2 - 1) / 3
    assert loss.item() == pytest.approx(-1.0)
    assert met["kl"] == 0.0 and met["ratio_mean"] == pytest.approx(1.0) and met["num_tokens"] == 3.0
    loss.backward()
    # d loss / d cur = -A * ratio / 3 for unclipped tokens
    torch.testing.assert_close(z.grad, _t([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]))


def test_clipping_dual_clip_and_is_cap_by_hand():
    # one sample per case, one token each; cur - old chosen by hand
    cur = _t([[math.log(1.5)], [math.log(0.5)], [math.log(4.0)], [0.0]]).requires_grad_()
    old = torch.zeros(4, 1, dtype=F64)
    adv = _t([1.0, -1.0, -1.0, 1.0])
    mask = torch.ones(4, 1, dtype=torch.bool)
    gen = _t([[0.0], [0.0], [0.0], [-LN2]])  # last token: w_is = exp(0 + ln 2) = 2
    # ratio 1.5, A = 1 -> -1.2 (clipped high); ratio 0.5, A = -1 -> max(0.5, 0.8) = 0.8 (clipped low);
    # ratio 4, A = -1 -> max(4, 1.2) = 4 -> dual clip c = 3 -> 3; ratio 1, A = 1, w_is 2 capped at 1.5 -> -1.5
    loss, met = policy_loss(cur, old, cur.detach(), gen, adv, mask, dual_clip_c=3.0, is_cap=1.5,
                            kl_coef=0.0)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 3.0 - 1.5) / 4)
    assert met["clip_frac_high"] == pytest.approx(0.25)
    assert met["clip_frac_low"] == pytest.approx(0.25)
    assert met["dual_clip_frac"] == pytest.approx(0.25)
    assert met["is_weight_mean"] == pytest.approx((1 + 1 + 1 + 1.5) / 4)
    assert met["logprob_error"] == pytest.approx(LN2 / 4)
    loss.backward()
    # only the unclipped token carries gradient: -A * w_is * ratio / 4 = -1.5 / 4
    torch.testing.assert_close(cur.grad, _t([[0.0], [0.0], [0.0], [-1.5 / 4]]))
    # without the dual clip the third token contributes 4; without the cap the last one -2
    loss2, _ = policy_loss(cur, old, cur.detach(), gen, adv, mask, kl_coef=0.0)
    assert loss2.item() == pytest.approx((-1.2 + 0.8 + 4.0 - 2.0) / 4)


def test_k3_kl_by_hand():
    cur = _t([[0.0, -1.0]]).requires_grad_()
    ref = _t([[LN2, -1.0]])  # k3 = 2 - ln 2 - 1 on token 0, 0 on token 1
    gen = _t([[-LN2, -1.0]])  # on-policy weight exp(cur - gen) = 2 on token 0
    mask = torch.ones(1, 2, dtype=torch.bool)
    k3 = 1.0 - LN2
    loss, met = policy_loss(cur, cur.detach(), ref, gen, _t([0.0]), mask, importance_sampling=False)
    assert met["kl"] == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.01 * 2 * k3 / 2)
    assert met["kl_loss"] == pytest.approx(loss.item()) and met["pg_loss"] == 0.0
    loss, _ = policy_loss(cur, cur.detach(), ref, gen, _t([0.0]), mask, on_policy_kl_weight=False)
    assert loss.item() == pytest.approx(0.01 * k3 / 2)
    loss, _ = policy_loss(cur, cur.detach(), ref, gen, _t([0.0]), mask, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * 2 * k3 / 2)


# ---------------------------------------------------------------- loop reference on random inputs

def _random_batch(seed, n=5, t=7, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    gen = -torch.rand(n, t, generator=g, dtype=dtype) * 3 - 0.05
    old = gen + 0.2 * torch.randn(n, t, generator=g, dtype=dtype)
    cur = old + 0.35 * torch.randn(n, t, generator=g, dtype=dtype)
    cur[0, :3] = old[0, :3] + 1.5  # ratio e^1.5 = 4.5 (> a dual clip of 3)
    ref = cur + 0.3 * torch.randn(n, t, generator=g, dtype=dtype)
    adv = torch.randn(n, generator=g, dtype=dtype)
    adv[0] = -abs(adv[0]) - 0.1
    adv[1] = abs(adv[1]) + 0.1
    mask = torch.rand(n, t, generator=g) < 0.7
    mask[0, :3] = True
    mask[2] = False  # an empty row
    ent = torch.rand(n, t, generator=g, dtype=dtype) * 2
    return cur, old, ref, gen, adv, mask, ent


def _reference_loss(cur, old, ref, gen, adv, mask, eps_lo, eps_hi, c, kl_coef, on_pol, use_is, cap):
    """Token by token, with explicit case analysis instead of min/max/clamp."""
    n, t = cur.shape
    total = torch.zeros((), dtype=cur.dtype)
    count = 0
    clip_lo = clip_hi = dual = 0
    ratios = 0.0
    for i in range(n):
        a = float(adv[i])
        for j in range(t):
            if not bool(mask[i, j]):
                continue
            count += 1
            r = torch.exp(cur[i, j] - old[i, j])
            rv = float(r.detach())
            ratios += rv
            if a >= 0:  # objective a * min(r, 1 + eps_hi)
                if rv > 1 + eps_hi:
                    obj = a * (1 + eps_hi) + 0 * r
                    clip_hi += a > 0
                else:
                    obj = a * r
            else:  # objective a * max(r, 1 - eps_lo), then at most c in ratio terms
                if rv < 1 - eps_lo:
                    obj = a * (1 - eps_lo) + 0 * r
                    clip_lo += 1
                elif c is not None and rv > c:
                    obj = a * c + 0 * r
                    dual += 1
                else:
                    obj = a * r
            w = math.exp(float(old[i, j]) - float(gen[i, j])) if use_is else 1.0
            if cap is not None and w > cap:
                w = cap
            d = ref[i, j] - cur[i, j]
            kl = torch.exp(d) - d - 1
            wk = math.exp(float(cur[i, j].detach()) - float(gen[i, j])) if on_pol else 1.0
            total = total + (-obj) * w + kl_coef * wk * kl
    return total / count, {"clip_frac_low": clip_lo / count, "clip_frac_high": clip_hi / count,
                           "dual_clip_frac": dual / count, "ratio_mean": ratios / count}


SETTINGS = [
    dict(),
    dict(dual_clip_c=3.0),
    dict(clip_eps_low=0.2, clip_eps_high=0.28, is_cap=1.1),
    dict(on_policy_kl_weight=False, kl_coef=0.05),
    dict(importance_sampling=False, dual_clip_c=2.0, kl_coef=0.0),
]


@pytest.mark.parametrize("kw", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(kw, seed):
    cur, old, ref, gen, adv, mask, ent = _random_batch(seed)
    full = dict(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=None, kl_coef=0.01,
                on_policy_kl_weight=True, importance_sampling=True, is_cap=None)
    full.update(kw)
    x = cur.clone().requires_grad_()
    loss, met = policy_loss(x, old, ref, gen, adv, mask, entropy=ent, **full)
    loss.backward()
    y = cur.clone().requires_grad_()
    want, want_met = _reference_loss(y, old, ref, gen, adv, mask, full["clip_eps_low"], full["clip_eps_high"],
                                     full["dual_clip_c"], full["kl_coef"], full["on_policy_kl_weight"],
                                     full["importance_sampling"], full["is_cap"])
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)
    for k, v in want_met.items():
        assert met[k] == pytest.approx(v, abs=1e-12), k
    # the data exercise both clips (and the dual clip when it is on)
    assert met["clip_frac_low"] > 0 and met["clip_frac_high"] > 0
    if full["dual_clip_c"] is not None:
        assert met["dual_clip_frac"] > 0
    m = mask.to(F64)
    assert met["entropy"] == pytest.approx(float((ent * m).sum() / m.sum()))
    assert met["logprob_error"] == pytest.approx(float(((gen - old).abs() * m).sum() / m.sum()))
    assert met["num_tokens"] == float(mask.sum())


def test_float32_input_matches_float64_reference():
    cur, old, ref, gen, adv, mask, _ = _random_batch(5)
    loss32, _ = policy_loss(cur.float(), old.float(), ref.float(), gen.float(), adv.float(), mask)
    loss64, _ = policy_loss(cur, old, ref, gen, adv, mask)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- gradients

def test_kl_gradient_is_analytic():
    cur, old, ref, gen, _, mask, _ = _random_batch(3)
    adv = torch.zeros(cur.shape[0], dtype=F64)  # no policy-gradient term
    x = cur.clone().requires_grad_()
    loss, _ = policy_loss(x, old, ref, gen, adv, mask, kl_coef=0.03)
    loss.backward()
    # d/dcur [exp(ref - cur) - (ref - cur) - 1] = 1 - exp(ref - cur); weight exp(cur - gen) is constant
    want = 0.03 * torch.exp(cur - gen) * (1 - torch.exp(ref - cur)) * mask / mask.sum()
    torch.testing.assert_close(x.grad, want, rtol=1e-12, atol=1e-14)
    # with the weight not detached the gradient would differ
    wrong = want + 0.03 * torch.exp(cur - gen) * (torch.exp(ref - cur) - (ref - cur) - 1) * mask / mask.sum()
    assert not torch.allclose(x.grad, wrong)


def test_only_logprobs_carry_gradient():
    cur, old, ref, gen, adv, mask, _ = _random_batch(4)
    tensors = [t.clone().requires_grad_() for t in (cur, old, ref, gen, adv)]
    loss, _ = policy_loss(*tensors, mask)
    loss.backward()
    assert tensors[0].grad is not None and tensors[0].grad.abs().sum() > 0
    assert all(t.grad is None for t in tensors[1:])


def _tiny_policy(seed):
    g = torch.Generator().manual_seed(seed)
    n, t, v, h = 7, 9, 11, 6
    feats = torch.randn(n, t, h, generator=g, dtype=F64)
    tokens = torch.randint(0, v, (n, t), generator=g)
    w = (0.5 * torch.randn(h, v, generator=g, dtype=F64)).requires_grad_()
    with torch.no_grad():
        base = torch.log_softmax(feats @ w, -1).gather(-1, tokens[..., None])[..., 0]
    old = base + 0.3 * torch.randn(n, t, generator=g, dtype=F64)
    gen = old + 0.1 * torch.randn(n, t, generator=g, dtype=F64)
    ref = base + 0.2 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    lengths = torch.tensor([9, 0, 4, 7, 1, 0, 6])  # ragged, two empty rows
    mask = torch.arange(t)[None, :] < lengths[:, None]

    def logprobs(rows):
        return torch.log_softmax(feats[rows] @ w, -1).gather(-1, tokens[rows][..., None])[..., 0]

    return w, logprobs, old, ref, gen, adv, mask


@pytest.mark.parametrize("kw", [dict(), dict(dual_clip_c=3.0, is_cap=1.2)])
def test_micro_batches_give_the_whole_batch_gradient(kw):
    w, logprobs, old, ref, gen, adv, mask = _tiny_policy(0)
    n = mask.shape[0]
    rows = torch.arange(n)
    loss, met = policy_loss(logprobs(rows), old, ref, gen, adv, mask, **kw)
    loss.backward()
    g_full = w.grad.clone()
    w.grad = None

    total = int(mask.sum())
    loss_sum, met_sum = 0.0, {}
    for part in (rows[:3], rows[3:4], rows[4:]):  # ragged micro-batches; rows 1 and 5 are empty
        l_mb, m_mb = policy_loss(logprobs(part), old[part], ref[part], gen[part], adv[part], mask[part],
                                 num_global_tokens=total, **kw)
        l_mb.backward()  # gradients accumulate in w.grad
        loss_sum += l_mb.item()
        for k, v in m_mb.items():
            met_sum[k] = met_sum.get(k, 0.0) + v
    torch.testing.assert_close(w.grad, g_full, rtol=1e-12, atol=1e-14)
    assert loss_sum == pytest.approx(loss.item(), abs=1e-12)
    for k in ("loss", "kl", "clip_frac_low", "clip_frac_high", "ratio_mean", "logprob_error", "num_tokens"):
        assert met_sum[k] == pytest.approx(met[k], abs=1e-12), k

    # per-micro-batch means (the default denominator) do not give that gradient
    w.grad = None
    for part in (rows[:3], rows[3:4], rows[4:]):
        l_mb, _ = policy_loss(logprobs(part), old[part], ref[part], gen[part], adv[part], mask[part], **kw)
        l_mb.backward()
    assert not torch.allclose(w.grad, g_full)


def test_masked_garbage_and_empty_rows_do_not_leak():
    cur, old, ref, gen, adv, mask, _ = _random_batch(6)
    x = cur.clone().requires_grad_()
    loss, met = policy_loss(x, old, ref, gen, adv, mask)
    loss.backward()
    bad = ~mask
    junk = [t.clone() for t in (cur, old, ref, gen)]
    for k, t in enumerate(junk):
        t[bad] = (float("nan"), float("-inf"), float("inf"), -1e30)[k]
    y = junk[0].requires_grad_()
    loss2, met2 = policy_loss(y, junk[1], junk[2], junk[3], adv, mask)
    loss2.backward()
    assert loss2.item() == loss.item()
    assert torch.equal(y.grad, x.grad)
    assert torch.all(y.grad[bad] == 0) and torch.all(y.grad[2] == 0)  # row 2 is empty
    assert met2 == met
    # an advantage of a sample with no tokens may be anything
    adv2 = adv.clone()
    adv2[2] = float("nan")
    loss3, _ = policy_loss(cur, old, ref, gen, adv2, mask)
    assert loss3.item() == loss.item()


def test_all_masked_gives_zero_loss_and_zero_gradient():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    loss, met = policy_loss(x, x.detach(), x.detach(), x.detach(), torch.ones(3, dtype=F64), mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0) and met["num_tokens"] == 0.0
    assert all(math.isfinite(v) for v in met.values())


def test_numeric_mask_equals_bool_mask():
    cur, old, ref, gen, adv, mask, _ = _random_batch(7)
    a, _ = policy_loss(cur, old, ref, gen, adv, mask)
    b, _ = policy_loss(cur, old, ref, gen, adv, mask.to(torch.float32))
    assert a.item() == b.item()


# ---------------------------------------------------------------- errors

def test_errors():
    cur, old, ref, gen, adv, mask, _ = _random_batch(8)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        policy_loss(cur, old[:, :-1], ref, gen, adv, mask)
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(cur, old, ref, gen, adv[:, None].expand_as(cur), mask)
    with pytest.raises(ValueError, match=r"logprobs must be \[N, T\]"):
        policy_loss(cur[0], old[0], ref[0], gen[0], adv[:1], mask[0])
    with pytest.raises(ValueError, match="mask has shape"):
        policy_loss(cur, old, ref, gen, adv, mask[:-1])
    bad = ref.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"ref_logprobs is not finite at \(0, 0\)"):
        policy_loss(cur, old, bad, gen, adv, mask)
    bad_adv = adv.clone()
    bad_adv[1] = float("inf")
    if bool(mask[1].any()):
        with pytest.raises(ValueError, match="advantages is not finite"):
            policy_loss(cur, old, ref, gen, bad_adv, mask)
    with pytest.raises(ValueError, match="num_global_tokens"):
        policy_loss(cur, old, ref, gen, adv, mask, num_global_tokens=int(mask.sum()) - 1)
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss(cur, old, ref, gen, adv, mask, dual_clip_c=0.9)
    with pytest.raises(ValueError, match="is_cap"):
        policy_loss(cur, old, ref, gen, adv, mask, is_cap=0.0)
    with pytest.raises(ValueError, match="clip_eps_low"):
        policy_loss(cur, old, ref, gen, adv, mask, clip_eps_low=1.0)
    with pytest.raises(ValueError, match="mask must be boolean"):
        policy_loss(cur, old, ref, gen, adv, mask.to(torch.int64) * 2)
    with pytest.raises(TypeError, match="floating-point"):
        policy_loss(cur.long(), old, ref, gen, adv, mask)
    with pytest.raises(TypeError, match="torch.Tensor"):
        policy_loss(cur, old.tolist(), ref, gen, adv, mask)
