"""The vectorised sampler against a per-row reference written out with Python sets."""
import math

import torch

from hpo_engine.runtime.sampling import SamplingParams, sample


def kept_distribution(logits, p: SamplingParams):
    """Reference: dict token -> probability of the distribution `p` samples from."""
    logits = logits.double().clone()
    logits[p.banned_token_ids] = -math.inf
    probs = (logits / p.temperature).softmax(-1)
    order = sorted(range(len(probs)), key=lambda t: (-probs[t].item(), t))
    kept, mass = [], 0.0
    for rank, t in enumerate(order):
        if (p.top_k and rank >= p.top_k) or (rank > 0 and mass >= p.top_p) or probs[t] == 0:
            break
        kept.append(t)
        mass += probs[t].item()
    total = sum(probs[t].item() for t in kept)
    return {t: probs[t].item() / total for t in kept}


def check_rows(logits, params, tokens, logprobs):
    """Greedy rows: the argmax of the unbanned logits with its unscaled logprob; sampled rows: a token
    of the reference's kept set with its logprob there."""
    for i, p in enumerate(params):
        tok, lp = int(tokens[i]), float(logprobs[i])
        if p.temperature == 0:
            masked = logits[i].clone()
            masked[p.banned_token_ids] = -math.inf
            assert tok == int(masked.argmax())
            assert abs(lp - float(masked.log_softmax(-1)[tok])) < 1e-5
            continue
        dist = kept_distribution(logits[i], p)
        assert tok in dist, f"row {i}: token {tok} outside the top-k/top-p set"
        assert abs(lp - math.log(dist[tok])) < 1e-4


def test_sampled_tokens_and_logprobs_match_reference():
    torch.manual_seed(0)
    V = 97
    params = [SamplingParams(temperature=0.7, top_k=5), SamplingParams(temperature=1.0, top_p=0.6),
              SamplingParams(temperature=1.5, top_k=20, top_p=0.8, banned_token_ids=[0, 1, 2, 3]),
              SamplingParams(temperature=0.0, banned_token_ids=[5]), SamplingParams(temperature=1.0)]
    for trial in range(20):
        logits = torch.randn(len(params), V) * 3
        gens = [torch.Generator().manual_seed(trial * 10 + i) for i in range(len(params))]
        check_rows(logits, params, *sample(logits, params, gens))


def test_shared_top_k_sorts_only_k_and_matches_reference():
    """Rows sharing a top-k take the narrow path (torch.topk of k); a greedy row rides along with
    its full-vocabulary logprob. Tokens and logprobs as the reference, whatever the batch around."""
    torch.manual_seed(2)
    V = 203
    params = [SamplingParams(temperature=0.9, top_k=7), SamplingParams(temperature=1.3, top_k=7, top_p=0.7),
              SamplingParams(temperature=0.0), SamplingParams(temperature=0.6, top_k=7, banned_token_ids=[4])]
    for trial in range(20):
        logits = torch.randn(len(params), V) * 2
        gens = [torch.Generator().manual_seed(trial * 10 + i) for i in range(len(params))]
        tokens, logprobs = sample(logits, params, gens)
        check_rows(logits, params, tokens, logprobs)
        for i, p in enumerate(params):          # a sampled row alone: the same bits (batch invariance)
            if p.temperature > 0:
                alone = sample(logits[i:i + 1], [p], [torch.Generator().manual_seed(trial * 10 + i)])
                assert int(alone[0][0]) == int(tokens[i]) and float(alone[1][0]) == float(logprobs[i])


def test_narrow_top_k_with_ties_is_a_valid_top_k():
    """Logits with many ties (as bf16 gives): the kept set is k tokens none of which is less likely
    than a cut one; the sampled token's logprob is that of the kept set."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randint(0, 4, (3, 50), generator=g).float()
    p = SamplingParams(temperature=1.0, top_k=9)
    seen = set()
    for trial in range(300):
        tokens, logprobs = sample(logits, [p] * 3, [torch.Generator().manual_seed(trial * 3 + i) for i in range(3)])
        for i in range(3):
            tok, lp = int(tokens[i]), float(logprobs[i])
            ninth = logits[i].sort(descending=True).values[8]
            assert logits[i, tok] >= ninth
            kept_mass = logits[i].sort(descending=True).values[:9].exp().sum()
            assert abs(lp - float(logits[i, tok] - kept_mass.log())) < 1e-5
            seen.add((i, tok))
    assert len(seen) > 3 * 5        # it does sample across the kept tokens


def test_sampling_frequencies_follow_the_distribution():
    torch.manual_seed(1)
    logits = torch.randn(1, 6)
    p = SamplingParams(temperature=0.8, top_k=4)
    dist = kept_distribution(logits[0], p)
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(6)
    n = 4000
    for _ in range(n):
        counts[int(sample(logits, [p], [g])[0][0])] += 1
    for t in range(6):
        expected = dist.get(t, 0.0)
        assert abs(counts[t].item() / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def test_greedy_logprobs_are_unscaled():
    logits = torch.randn(2, 11)
    tokens, logprobs = sample(logits, [SamplingParams(), SamplingParams()], [None, None])
    assert torch.equal(tokens, logits.argmax(-1))
    assert torch.allclose(logprobs, logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1))
