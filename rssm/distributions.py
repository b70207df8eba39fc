"""Distributions used by the world model: categorical latents, two-hot regression, symlog.

Everything here is a pure function of tensors. Logits of categorical latents have shape (..., G, C):
G groups of C-way categoricals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def kl_divergence(posterior_logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) between two sets of G categoricals given by logits.

    log_softmax subtracts the max before exponentiating, so logits of any finite magnitude are safe.

    Args:
        posterior_logits: logits of q, shape (..., G, C).
        prior_logits: logits of p, shape (..., G, C).
    Returns:
        KL summed over C and then over G, shape (...).
    """
    q_log = F.log_softmax(posterior_logits, dim=-1)  # (..., G, C)
    p_log = F.log_softmax(prior_logits, dim=-1)  # (..., G, C)
    return categorical_kl(q_log.exp(), q_log, p_log)


def categorical_kl(q_probs: torch.Tensor, q_log: torch.Tensor, p_log: torch.Tensor) -> torch.Tensor:
    """KL(q || p) from normalised probabilities and log-probabilities, (..., G, C) -> (...).

    For callers that need several terms of the same distributions: they normalise once and share.
    """
    kl = (q_probs * (q_log - p_log)).sum(-1)  # (..., G)
    return kl.sum(-1)  # (...)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of G categoricals, summed over G: (..., G, C) -> (...)."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum((-2, -1))


def unimix_logits(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of (1 - unimix) * softmax(logits) + unimix / C, shape kept."""
    if unimix <= 0.0:
        return F.log_softmax(logits, dim=-1)
    return unimix_categorical(logits, unimix)[1]


def unimix_categorical(logits: torch.Tensor, unimix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and log-probabilities of (1 - unimix) * softmax(logits) + unimix / C, shapes kept.

    The RSSM loop needs both; handing out the mixture itself spares a softmax of its logarithm.
    """
    if unimix <= 0.0:
        log_probs = F.log_softmax(logits, dim=-1)
        return log_probs.exp(), log_probs
    probs = (1.0 - unimix) * torch.softmax(logits, dim=-1) + unimix / logits.shape[-1]
    return probs, torch.log(probs)


def sample_onehot(probs: torch.Tensor) -> torch.Tensor:
    """One-hot sample with straight-through gradients: forward is one-hot, backward is d probs.

    Args:
        probs: probabilities, shape (..., C) (the RSSM's unimixed ones: a softmax of their log would form them
            again).
    Returns:
        One-hot sample of shape (..., C) whose gradient flows to `probs`.
    """
    uniform = torch.rand(*probs.shape[:-1], 1, device=probs.device, dtype=probs.dtype)
    return straight_through(inverse_cdf_index(probs, uniform), probs)


def mode_onehot(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of the most likely class, with the same straight-through gradient as `sample_onehot`."""
    return straight_through(logits.argmax(-1), torch.softmax(logits, dim=-1))


def inverse_cdf_index(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Class drawn by inverse CDF, one uniform number per categorical: (..., C), (..., 1) -> (...) int64."""
    return (probs.detach().cumsum(-1) < uniform).sum(-1).clamp_(max=probs.shape[-1] - 1)


def onehot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot of `index` (...) with the shape (..., C), dtype and device of `like`, without a gradient. Unlike
    `F.one_hot`, it never reads the indices back to the host to check them."""
    return torch.zeros_like(like).scatter_(-1, index.unsqueeze(-1), 1.0)


def straight_through(index: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """One-hot of `index` (...) in the forward pass, gradient of `probs` (..., C) in the backward pass."""
    if not probs.requires_grad:  # no backward pass: the one-hot alone
        return onehot(index, probs)
    return onehot(index, probs) + (probs - probs.detach())  # exactly one-hot forward


def symlog_bins(num_bins: int, low: float = -20.0, high: float = 20.0, device=None) -> torch.Tensor:
    """Bin centres in symlog space for two-hot regression, shape (num_bins,) (DreamerV3 2023)."""
    return torch.linspace(low, high, num_bins, device=device)


def symexp_bins(num_bins: int, limit: float = 20.0) -> torch.Tensor:
    """Bin centres in the value's own space, symexp of points evenly spaced in [-limit, limit], exactly
    symmetric around 0 and with 0 itself for an odd count (DreamerV3 now). Shape (num_bins,)."""
    half = symexp(torch.linspace(-limit, 0.0, (num_bins + 1) // 2, dtype=torch.float64))  # (-limit .. 0]
    upper = -half.flip(0)[1:] if num_bins % 2 else -half.flip(0)  # mirror, without a second 0 for an odd count
    return torch.cat([half, upper]).float()


def twohot_bins(num_bins: int, space: str) -> torch.Tensor:
    """The bins of a two-hot head: `space` symlog (2023) or symexp (now); see `TwoHotSpace`."""
    return symlog_bins(num_bins) if space == "symlog" else symexp_bins(num_bins)


def _twohot_weights(x: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the two neighbouring bins of each value, and the weight of the upper one: (...) each."""
    K = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    above = torch.searchsorted(bins, x.contiguous(), right=True).clamp(1, K - 1)  # (...)
    below = above - 1
    lo, hi = bins[below], bins[above]
    return below, above, ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def twohot_encode(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of scalars on a sorted grid of bins.

    The weight is split between the two neighbouring bins so that the expectation over bins equals x
    (values outside the grid go wholly to the end bin).

    Args:
        x: values in the same space as `bins`, shape (...).
        bins: sorted bin centres, shape (K,).
    Returns:
        Target probabilities, shape (..., K).
    """
    below, above, w_hi = _twohot_weights(x, bins)
    target = torch.zeros(*x.shape, bins.shape[0], device=x.device, dtype=x.dtype)
    target.scatter_(-1, below.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    target.scatter_add_(-1, above.unsqueeze(-1), w_hi.unsqueeze(-1))
    return target


def twohot_log_prob(log_probs: torch.Tensor, target: torch.Tensor | tuple[torch.Tensor, ...], bins: torch.Tensor,
                    space: str = "symlog") -> torch.Tensor:
    """log-likelihood of the two-hot encoding of `target` under log-probabilities over bins: (..., K), (...) ->
    (...); for a tuple of targets, the sum of their log-likelihoods. With `space` symlog the target is encoded as
    symlog(target) on symlog bins (2023), with symexp as itself on symexp bins (now).

    Only the two bins next to each target carry weight, so they are gathered rather than multiplied densely, those
    of every target in one gather: its backward pass scatters into one (..., K) gradient, not one per bin.
    """
    index, weight = [], []
    for x in target if isinstance(target, tuple) else (target,):
        below, above, w_hi = _twohot_weights(symlog(x) if space == "symlog" else x, bins)
        index += [below, above]
        weight += [1.0 - w_hi, w_hi]
    return (log_probs.gather(-1, torch.stack(index, -1)) * torch.stack(weight, -1)).sum(-1)  # (..., 2M) -> (...)


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor, space: str = "symlog") -> torch.Tensor:
    """Cross-entropy of the two-hot target (`twohot_log_prob`) under softmax(logits): (..., K), (...) -> (...)."""
    return -twohot_log_prob(F.log_softmax(logits, dim=-1), target, bins, space)


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor, space: str = "symlog") -> torch.Tensor:
    """Expected value in the original space: (..., K) -> (...). symlog: symexp(sum_k p_k * bins_k) (2023).
    symexp (now): the bins are symmetric around 0 (`symexp_bins`), so the mean is the sum over the upper half of
    (p_k - p_mirror(k)) * bins_k: the bins reach +-5e8, and a plain sum of p_k * bins_k over uniform probabilities
    would leave an error of order 1 where the mean is 0; here mirrored probabilities cancel first. Products and
    sums are elementwise, so they stay in float32 under autocast (a matrix product would run in its dtype)."""
    probs = torch.softmax(logits, dim=-1)
    if space == "symlog":
        return symexp((probs * bins).sum(-1))
    K = bins.shape[0]
    m = K // 2  # bins above the middle (an odd count's middle bin is 0 and adds nothing)
    return ((probs[..., K - m:] - probs[..., :m].flip(-1)) * bins[K - m:]).sum(-1)
