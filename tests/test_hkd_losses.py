"""ACD (InfoNCE) and LRD (MSE) loss maths against hand-computed cases and float64 loops."""
import math

import pytest
import torch

from fairseq_hkd.criterions.losses import acd_loss, acd_num_negatives, lrd_loss, sample_negatives


def acd_reference(student, teacher, negatives, tau, tokens=None, eps=1e-6):
    """Literal float64 loops of the paper's formula (Python floats, no torch ops on the maths)."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / max(n, eps) for x in v]

    S = [unit([float(x) for x in row]) for row in student]
    E = [unit([float(x) for x in row]) for row in teacher]
    total, correct = 0.0, 0
    for i in range(len(S)):
        pos = sum(a * b for a, b in zip(S[i], E[i])) / tau
        negs = []
        for k in negatives[i]:
            k = int(k)
            if tokens is not None and int(tokens[k]) == int(tokens[i]):
                negs.append(-1e9)
            else:
                negs.append(sum(a * b for a, b in zip(S[i], E[k])) / tau)
        m = max([pos] + negs)
        denom = math.exp(pos - m) + sum(math.exp(n - m) for n in negs)
        total += -((pos - m) - math.log(denom))
        correct += int(all(pos > n for n in negs))
    return total, correct


def test_acd_hand_computed_orthogonal_case():
    # z = e = one-hot, tau = 1, one negative each: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) per token
    x = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    loss, correct = acd_loss(x, x, torch.tensor([[1], [0]]), temperature=1.0)
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), abs=1e-6)  # 0.626523...
    assert int(correct) == 2
    # tau = 0.5 doubles the margin: log(1 + e^-2) per token; a zero student vector gives all logits 0
    loss, _ = acd_loss(x, x, torch.tensor([[1], [0]]), temperature=0.5)
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-2)), abs=1e-6)
    loss, correct = acd_loss(torch.zeros(2, 2), x, torch.tensor([[1], [0]]), temperature=0.02)
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-6) and int(correct) == 0


@pytest.mark.parametrize("tau", [1.0, 0.1, 0.02])
@pytest.mark.parametrize("mask_same", [False, True])
def test_acd_matches_float64_loop(tau, mask_same):
    g = torch.Generator().manual_seed(3)
    N, D, K = 7, 5, 4
    s, e = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    e[2] = 1e-9  # a (near-)zero teacher vector: normalised with eps, no NaN
    negs = sample_negatives(N, K, generator=g)
    tokens = torch.tensor([5, 6, 5, 7, 6, 5, 8]) if mask_same else None
    loss, correct = acd_loss(s, e, negs, tau, tokens)
    ref, ref_correct = acd_reference(s.tolist(), e.tolist(), negs.tolist(), tau, tokens)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert int(correct) == ref_correct


def test_acd_gradient_matches_float64_autograd_and_teacher_gets_none():
    g = torch.Generator().manual_seed(0)
    N, D, K = 6, 4, 3
    s = torch.randn(N, D, generator=g, requires_grad=True)
    e = torch.randn(N, D, generator=g, requires_grad=True)
    negs = sample_negatives(N, K, generator=g)
    loss, _ = acd_loss(s, e, negs, 0.1)
    loss.backward()
    assert e.grad is None  # the teacher is data
    s64 = s.detach().double().requires_grad_()
    z = s64 / s64.norm(dim=1, keepdim=True).clamp_min(1e-6)
    t = e.detach().double() / e.detach().double().norm(dim=1, keepdim=True)
    ref = 0.0
    for i in range(N):
        logits = torch.stack([z[i] @ t[i]] + [z[i] @ t[k] for k in negs[i].tolist()]) / 0.1
        ref = ref - torch.log_softmax(logits, 0)[0]
    ref.backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-5)


def test_sample_negatives_distinct_not_self_and_uniform():
    g = torch.Generator().manual_seed(1)
    N, K, draws = 5, 2, 3000
    counts = torch.zeros(N, N)
    for _ in range(draws):
        idx = sample_negatives(N, K, generator=g)
        assert idx.shape == (N, K)
        for i in range(N):
            row = idx[i].tolist()
            assert len(set(row)) == K and i not in row  # without replacement, never the token itself
        counts.scatter_add_(1, idx, torch.ones(N, K))
    expected = draws * K / (N - 1)  # 1500 per other token
    off = ~torch.eye(N, dtype=torch.bool)
    assert ((counts[off] - expected).abs() < 0.08 * expected).all(), counts
    assert counts.diagonal().sum() == 0
    assert sample_negatives(3, 0).shape == (3, 0)
    with pytest.raises(ValueError, match="distinct negatives"):
        sample_negatives(3, 3)


def test_sample_negatives_chunked_rows():
    # N large enough that rows are drawn in several chunks: still distinct and never self
    N = 5000
    idx = sample_negatives(N, 7, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (N, 7)
    assert not (idx == torch.arange(N)[:, None]).any()
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()


def test_num_negatives_rule():
    assert acd_num_negatives(1000, 700) == 700
    assert acd_num_negatives(701, 700) == 700
    assert acd_num_negatives(700, 700) == 560  # N <= K: floor(0.8 N)
    assert acd_num_negatives(10, 700) == 8
    assert acd_num_negatives(2, 700) == 1
    assert acd_num_negatives(1, 700) == 0
    assert acd_num_negatives(10, 700, small_batch_ratio=0.5) == 5


def test_acd_single_token_is_zero_loss():
    loss, correct = acd_loss(torch.randn(1, 3), torch.randn(1, 3), torch.empty(1, 0, dtype=torch.long), 0.02)
    assert loss.item() == 0.0 and int(correct) == 1


def test_lrd_hand_computed():
    u = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    e = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    assert lrd_loss(u, e, "sum").item() == 1 + 4 + 4 + 9  # sum over tokens and dimensions (paper)
    assert lrd_loss(u, e, "mean").item() == (1 + 4) / 2 + (4 + 9) / 2
    lrd_loss(u, e).backward()
    assert e.grad is None
    torch.testing.assert_close(u.grad, 2 * (u - e).detach())
    with pytest.raises(ValueError, match="sum' or 'mean"):
        lrd_loss(u, e, "max")
