import math

import pytest
import torch

from rssm import kl_divergence
from rssm.distributions import (
    entropy,
    sample_onehot,
    symexp,
    symlog,
    twohot_encode,
    twohot_loss,
    twohot_mean,
    unimix_logits,
)


def seed_kl(posterior_logits, prior_logits):
    """The seed document's formula, hand-written log_softmax included."""
    def log_softmax(x, dim=-1):
        return x - torch.log(torch.sum(torch.exp(x), dim=dim, keepdim=True))
    q_log, p_log = log_softmax(posterior_logits), log_softmax(prior_logits)
    return (q_log.exp() * (q_log - p_log)).sum(dim=-1).sum(dim=-1)


def reference_kl(q_logits, p_logits):
    """Sum of q * (log q - log p) in float64, log-probabilities from float64 logsumexp."""
    log_q = q_logits.double() - torch.logsumexp(q_logits.double(), -1, keepdim=True)
    log_p = p_logits.double() - torch.logsumexp(p_logits.double(), -1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum((-2, -1))


def test_kl_matches_seed_formula_on_random_inputs():
    gen = torch.Generator().manual_seed(44)
    for shape in [(2, 4, 4), (3, 5, 32, 32), (7, 1, 3)]:
        q, p = torch.randn(*shape, generator=gen) * 3, torch.randn(*shape, generator=gen) * 3
        kl = kl_divergence(q, p)
        assert kl.shape == shape[:-2]
        torch.testing.assert_close(kl, seed_kl(q, p), rtol=1e-5, atol=1e-5)


def test_kl_seed_example_values():
    torch.manual_seed(44)
    postr, prior = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    torch.testing.assert_close(kl_divergence(postr, prior), torch.tensor([1.1031, 3.5609]), atol=1e-4, rtol=0)


def test_kl_nonnegative_zero_at_equality_and_asymmetric():
    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(64, 8, 8, generator=gen) * 2, torch.randn(64, 8, 8, generator=gen) * 2
    assert (kl_divergence(q, p) >= 0).all()
    assert (kl_divergence(q, p) > 1e-3).all()
    torch.testing.assert_close(kl_divergence(q, q), torch.zeros(64), atol=1e-6, rtol=0)
    # A shift of all logits leaves the distribution unchanged.
    torch.testing.assert_close(kl_divergence(q, q + 5.0), torch.zeros(64), atol=1e-5, rtol=0)
    assert (kl_divergence(q, p) - kl_divergence(p, q)).abs().max() > 1e-2


def test_kl_finite_and_correct_at_large_logits():
    gen = torch.Generator().manual_seed(1)
    q, p = torch.randn(16, 4, 8, generator=gen) * 1e4, torch.randn(16, 4, 8, generator=gen) * 1e4
    assert not torch.isfinite(seed_kl(q, p)).all(), "the seed's hand-written log_softmax overflows here"
    kl = kl_divergence(q, p)
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl.double(), reference_kl(q, p), rtol=1e-5, atol=1e-2)


def test_kl_against_monte_carlo():
    gen = torch.Generator().manual_seed(2)
    q, p = torch.randn(1, 6, generator=gen), torch.randn(1, 6, generator=gen)
    samples = torch.multinomial(torch.softmax(q[0], -1), 200_000, replacement=True, generator=gen)
    log_ratio = torch.log_softmax(q[0], -1) - torch.log_softmax(p[0], -1)
    assert kl_divergence(q[None], p[None]).item() == pytest.approx(log_ratio[samples].mean().item(), abs=0.01)


def test_entropy_uniform_is_log_classes_per_group():
    assert entropy(torch.zeros(3, 5, 8)).tolist() == pytest.approx([5 * math.log(8)] * 3)


def test_unimix_floor_and_normalisation():
    logits = torch.tensor([[100.0, -100.0, 0.0, -50.0]])
    probs = unimix_logits(logits, 0.01).exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    assert probs.min() >= 0.01 / 4 - 1e-7
    assert probs[0, 0] == pytest.approx(0.99 + 0.0025, abs=1e-6)


def test_sample_onehot_is_onehot_with_right_frequencies():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.1, 0.2, 0.7])).expand(50_000, 3)
    sample = sample_onehot(torch.softmax(logits, -1))
    assert set(sample.detach().sum(-1).tolist()) == {1.0}
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(sample.detach().mean(0), torch.tensor([0.1, 0.2, 0.7]), atol=0.01, rtol=0)


def test_sample_onehot_straight_through_gradient_is_softmax_jacobian():
    logits = torch.randn(5, 4, requires_grad=True)
    weights = torch.randn(4)
    (sample_onehot(torch.softmax(logits, -1)) * weights).sum().backward()
    probs = torch.softmax(logits.detach(), -1)
    expected = probs * (weights - (probs * weights).sum(-1, keepdim=True))  # d/dlogits of probs @ w
    torch.testing.assert_close(logits.grad, expected)


def test_symlog_hand_values_and_round_trip():
    x = torch.tensor([-100.0, -1.0, 0.0, 1.0, math.e - 1.0, 1e6])
    torch.testing.assert_close(symlog(x)[:5], torch.tensor([-math.log(101.0), -math.log(2.0), 0.0, math.log(2.0), 1.0]))
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-5)


def test_twohot_hand_values():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    enc = twohot_encode(torch.tensor([0.25, -2.0, 1.0, 5.0, -1.5]), bins)
    expected = torch.tensor([
        [0, 0, 0.75, 0.25, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],  # beyond the grid: all on the last bin
        [0.5, 0.5, 0, 0, 0],
    ])
    torch.testing.assert_close(enc, expected)


def test_twohot_round_trip_through_symlog_bins():
    bins = torch.linspace(-20, 20, 255)
    values = torch.tensor([-1234.5, -3.0, 0.0, 0.37, 7.0, 98765.0])
    target = twohot_encode(symlog(values), bins)
    torch.testing.assert_close(target.sum(-1), torch.ones(6))
    torch.testing.assert_close(symexp((target * bins).sum(-1)), values, rtol=1e-4, atol=1e-4)
    # Logits equal to log of the target make the expectation the value and the loss the target's entropy.
    logits = torch.log(target.clamp(min=1e-30))
    torch.testing.assert_close(twohot_mean(logits, bins), values, rtol=1e-4, atol=1e-4)
    ent = -(target * torch.log(target.clamp(min=1e-30))).sum(-1)
    torch.testing.assert_close(twohot_loss(logits, values, bins), ent, rtol=1e-4, atol=1e-4)
