"""Behaviour learning in imagination: actor, critic, lambda-returns and return normalisation (DreamerV3)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rssm.distributions import (
    inverse_cdf_index,
    onehot,
    straight_through,
    twohot_bins,
    twohot_log_prob,
    twohot_mean,
    unimix_logits,
)
from rssm.networks import ARCH_2023, MLP, Arch, zero_output

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def lambda_returns(reward: torch.Tensor, discount: torch.Tensor, value: torch.Tensor,
                   lam: float | torch.Tensor) -> torch.Tensor:
    """TD(lambda) returns of a trajectory, computed backwards from the last value.

        R_t = r_{t+1} + d_{t+1} * ((1 - lam_{t+1}) * v_{t+1} + lam_{t+1} * R_{t+1}),    R_H = v_H

    Args:
        reward: r_1 .. r_H, rewards on arriving at states 1 .. H, (N, H).
        discount: d_1 .. d_H, gamma times the (predicted) continue flag of states 1 .. H, (N, H).
        value: v_0 .. v_H, values of states 0 .. H, (N, H + 1).
        lam: the lambda of TD(lambda), or lam_1 .. lam_H (N, H): 0 at a state bootstraps fully from its value.
    Returns:
        R_0 .. R_{H-1}, (N, H).
    """
    N, H = reward.shape
    assert discount.shape == (N, H) and value.shape == (N, H + 1)
    if not torch.is_tensor(lam):  # filled on the device: a tensor made from a Python number is a host-to-GPU copy
        lam = torch.full((N, H), lam, dtype=reward.dtype, device=reward.device)
    lam = lam.expand(N, H)  # (N, H)
    interm = reward + discount * (1.0 - lam) * value[:, 1:]  # (N, H): the part that needs no recursion
    out = torch.empty_like(reward)
    last = value[:, -1]  # (N,)
    for t in reversed(range(H)):
        last = interm[:, t] + discount[:, t] * lam[:, t] * last
        out[:, t] = last
    return out


class ReturnNormalizer(nn.Module):
    """Scale of returns: an EMA of their 5th-95th percentile range, never below `floor`. Both ends start at 0
    and move by `rate` toward each batch's percentiles, with no bias correction (DreamerV3, both versions), so the
    scale stays at the floor until the range has grown past it. `gather` turns a batch of returns into the
    batch whose percentiles count: in a data-parallel job, the returns of every rank (`rssm.distributed`)."""

    def __init__(self, rate: float = 0.01, floor: float = 1.0, low: float = 0.05, high: float = 0.95,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.rate, self.floor, self.low, self.high, self.gather = rate, floor, low, high, gather
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("quantiles", torch.tensor([low, high]), persistent=False)  # both from one sort

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> torch.Tensor:
        """Fold a batch of returns into the range and return the new scale. A batch with a non-finite return
        is left out (its update is skipped by the agent, and it must not poison the range). No host sync."""
        flat = returns.detach().flatten().float()
        flat = flat if self.gather is None else self.gather(flat)
        finite = torch.isfinite(flat).all()
        lo, hi = torch.quantile(flat, self.quantiles)
        self.lo.copy_(torch.where(finite, self.lo.lerp(lo, self.rate), self.lo))
        self.hi.copy_(torch.where(finite, self.hi.lerp(hi, self.rate), self.hi))
        return self.scale()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "initialized", None)  # a flag of older runs, whose first batch set the range
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale(self) -> torch.Tensor:
        return torch.clamp(self.hi - self.lo, min=self.floor)


class Actor(nn.Module):
    """Policy over model features. Discrete and multi-discrete actions are one-hot segments of the action
    vector, each a categorical with `unimix`; continuous actions are a Normal with tanh-squashed mean and
    std in [min_std, max_std] (the env gets samples clipped to [-1, 1], rescaled to its bounds; the model gets
    them through `rssm.rssm.normalize_action`).

    Args:
        feat_dim, units, layers: network sizes.
        action_dims: sizes of the one-hot segments (discrete), or [A] (continuous).
        discrete: which of the two.
        unimix: uniform mix of the categoricals (2023: 0.01; now 0: upstream's categorical policy head takes none).
        outscale: scale of the output layer's initial weights (2023: 1, now: 0.01).
        arch: norm and initial weights.
    """

    def __init__(self, feat_dim: int, units: int, layers: int, action_dims: list[int], discrete: bool,
                 unimix: float = 0.01, min_std: float = 0.1, max_std: float = 1.0, outscale: float = 1.0,
                 arch: Arch = ARCH_2023):
        super().__init__()
        self.action_dims, self.discrete, self.unimix = list(action_dims), discrete, unimix
        self.min_std, self.max_std = min_std, max_std
        out = sum(action_dims) if discrete else 2 * action_dims[0]
        self.net = MLP(feat_dim, units, layers, out, arch, outscale)

    def forward(self, feat: torch.Tensor) -> ActionDist:
        out = self.net(feat)
        if self.discrete:
            return ActionDist(self, logits=[unimix_logits(x, self.unimix) for x in out.split(self.action_dims, -1)])
        mean, std = out.chunk(2, -1)
        std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        return ActionDist(self, mean=torch.tanh(mean), std=std)


@dataclass
class ActionDist:
    """The actor's distribution at a batch of states; actions are (..., A) vectors."""

    actor: Actor
    logits: list[torch.Tensor] | None = None  # discrete: one (..., n_i) log-probability tensor per segment
    mean: torch.Tensor | None = None  # continuous: (..., A)
    std: torch.Tensor | None = None

    def sample(self) -> torch.Tensor:
        """A sample with gradients: straight-through for one-hots, reparameterised for Normals. A Normal sample is
        not clipped: the env clips it, and the model divides it by max(1, |a|) without a gradient through the
        divisor (`rssm.rssm.normalize_action`), so a sample beyond the range still carries a gradient."""
        if self.logits is not None:
            parts = []
            for logits in self.logits:
                probs = logits.exp()
                # By inverse CDF, which draws some class even from a row of nan (the update that computed such a
                # row is skipped as not finite; multinomial would raise first).
                index = inverse_cdf_index(probs, torch.rand_like(probs[..., :1]))
                parts.append(straight_through(index, probs))
            return torch.cat(parts, -1)
        return self.mean + self.std * torch.randn_like(self.mean)  # (..., A)

    def mode(self) -> torch.Tensor:
        if self.logits is not None:
            return torch.cat([onehot(x.argmax(-1), x) for x in self.logits], -1)
        return self.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of (..., A) actions, summed over segments or dimensions: (...)."""
        if self.logits is not None:
            parts = action.detach().split(self.actor.action_dims, -1)
            return sum((a * x).sum(-1) for a, x in zip(parts, self.logits, strict=True))
        # The Normal's density written out: torch.distributions validates its arguments with a host read.
        z = (action.detach() - self.mean) / self.std
        return (-0.5 * z.square() - torch.log(self.std) - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        if self.logits is not None:
            return sum(-(x.exp() * x).sum(-1) for x in self.logits)
        return (0.5 + _HALF_LOG_2PI + torch.log(self.std)).sum(-1)


class Critic(nn.Module):
    """Value as a two-hot distribution over bins (`twohot`: symlog (2023) or symexp (now), see
    `rssm.distributions.twohot_log_prob`), with a slow EMA copy used as a regulariser."""

    def __init__(self, feat_dim: int, units: int, layers: int, bins: int = 255, twohot: str = "symlog",
                 arch: Arch = ARCH_2023):
        super().__init__()
        self.net = MLP(feat_dim, units, layers, bins, arch)
        zero_output(self.net.out)
        self.slow = copy.deepcopy(self.net).requires_grad_(False)
        self.twohot = twohot
        self.register_buffer("bins", twohot_bins(bins, twohot), persistent=False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Value logits (..., K)."""
        return self.net(feat)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The value that logits (..., K) predict: (...)."""
        return twohot_mean(logits, self.bins, self.twohot)

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        return self.mean(self.net(feat))

    def slow_value(self, feat: torch.Tensor) -> torch.Tensor:
        return self.mean(self.slow(feat))

    @torch.no_grad()
    def update_slow(self, rate: float, go: torch.Tensor | None = None) -> None:
        """Move the slow copy `rate` of the way to the critic; not at all where `go` (0-dim bool) is False."""
        weight = rate if go is None else rate * go.to(self.bins.dtype)
        for slow, fast in zip(self.slow.parameters(), self.net.parameters(), strict=True):
            slow.lerp_(fast, weight)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, slow_target: torch.Tensor) -> torch.Tensor:
        """Two-hot cross-entropy of value logits (..., K) toward the return and toward the slow critic's
        value: (...)."""
        log_probs = F.log_softmax(logits, dim=-1)  # (..., K)
        return -twohot_log_prob(log_probs, (target.detach(), slow_target.detach()), self.bins, self.twohot)


@dataclass(frozen=True)
class BehaviorSettings:
    """Imagination and actor-critic settings (defaults: DreamerV3 2023, where the two versions differ)."""

    horizon: int = 15
    gamma: float = 1.0 - 1.0 / 333.0
    lam: float = 0.95
    entropy: float = 3e-4
    slow_rate: float = 0.02
    backprop: bool = False  # actor gradient through the dynamics (True) or REINFORCE (False)
    replay_value: float = 0.0  # weight of the critic's loss on replayed states (`replay_value_loss`); 0: none
    replay_value_grad: bool = False  # that loss also trains the world model through the replayed states (now)
    # Imagined steps weighted by the continue head's probability at every state, the start included (now), or by
    # its mode after the start's recorded flag (2023).
    cont_prob: bool = False
    # The continue head learned the discount (its target is `gamma` at a non-terminal step), so imagined returns
    # are discounted by its output alone (now); else by `gamma` times its output (2023).
    contdisc: bool = False


def imagine(wm, actor: Actor, start, start_cont: torch.Tensor, horizon: int, backprop: bool,
            cont_prob: bool = False):
    """Roll the prior forward under the actor from N start states.

    Returns the features of states 0 .. H (N, H + 1, F), the actions taken at states 0 .. H-1 (N, H, A), the
    continue values of states 0 .. H (N, H + 1): the start's recorded flag `start_cont` and then the continue
    head's mode (DreamerV3 2023), or with `cont_prob` the head's probability at every state (now); and the actor's
    distributions at states 0 .. H-1 (fields (N, H, ...)) with their graph to the actor's parameters, which the
    actor's loss uses: one forward of the actor serves both acting and learning.
    """
    from rssm.rssm import features  # the world model's state layout

    dists, feats, learn = [], [], torch.is_grad_enabled()
    with torch.set_grad_enabled(backprop and learn):

        def policy(state):
            feats.append(features(state))  # (N, F): the actor's input, and the losses' state
            # The actor's input carries no gradient: with backprop the return reaches the actor through its
            # actions and the dynamics they drive, not back through the states it acted on (DreamerV1 and V2).
            with torch.set_grad_enabled(learn):
                dist = actor(feats[-1].detach())
            dists.append(dist)
            action = dist.sample()
            return action if backprop else action.detach()

        taken, states = zip(*wm.rssm.rollout(start, horizon, policy=policy), strict=True)
        feat = torch.stack([*feats, features(states[-1])], 1)  # (N, H + 1, F): one copy, not a stack per field
        actions = torch.stack(taken, 1)  # (N, H, A)
        if cont_prob:
            cont = torch.sigmoid(wm.cont(feat).squeeze(-1))  # (N, H + 1)
        else:
            cont = (wm.cont(feat[:, 1:]).squeeze(-1) > 0).to(feat.dtype)  # (N, H)
            cont = torch.cat([start_cont[:, None], cont], 1)  # (N, H + 1)
    return feat, actions, cont, stack_dists(dists)


def stack_dists(dists: list[ActionDist]) -> ActionDist:
    """Per-step distributions with (N, ...) fields as one with (N, H, ...) fields."""
    first = dists[0]
    if first.logits is not None:
        return ActionDist(first.actor, logits=[torch.stack(x, 1) for x in zip(*(d.logits for d in dists), strict=True)])
    return ActionDist(first.actor, mean=torch.stack([d.mean for d in dists], 1),
                      std=torch.stack([d.std for d in dists], 1))


def behavior_losses(wm, critic: Critic, normalizer: ReturnNormalizer, feat: torch.Tensor, actions: torch.Tensor,
                    cont: torch.Tensor, policy: ActionDist, s: BehaviorSettings):
    """Actor and critic losses on an imagined trajectory (from `imagine`, `policy` its actor distributions).

    Returns (actor loss, critic loss, the lambda-returns (N, H), metrics). The actor loss reaches the world model
    only through `feat` when `s.backprop`; the caller steps only the actor's and critic's parameters.
    """
    N, H1, _ = feat.shape
    H = H1 - 1
    critic_feat = feat.detach()
    critic_logits = critic(critic_feat)  # (N, H + 1, K): for the critic's loss, and the values under REINFORCE
    # REINFORCE needs no gradient of the returns, so no graph is built for them.
    with torch.set_grad_enabled(s.backprop and torch.is_grad_enabled()):
        reward = wm.predicted_reward(feat[:, 1:])  # (N, H): reward on arriving at states 1 .. H
        gamma = 1.0 if s.contdisc else s.gamma
        discount = gamma * cont  # (N, H + 1)
        value = critic.value(feat) if s.backprop else critic.mean(critic_logits.detach())  # (N, H + 1)
        returns = lambda_returns(reward, discount[:, 1:], value, s.lam)  # (N, H)
    # Weight of state t: the discounted probability that the episode is still running there.
    weight = (torch.cumprod(discount, 1) / gamma).detach()[:, :H]  # (N, H)
    scale = normalizer.update(returns)
    entropy = policy.entropy()  # (N, H); from detached states, as the log-probabilities: they reach the actor alone
    if s.backprop:
        objective = returns / scale
    else:
        advantage = ((returns - value[:, :H]) / scale).detach()
        objective = policy.log_prob(actions) * advantage
    actor_loss = -(weight * (objective + s.entropy * entropy)).mean()
    slow_value = critic.slow_value(critic_feat[:, :H])  # (N, H)
    critic_loss = (weight * critic.loss(critic_logits[:, :H], returns, slow_value)).mean()
    metrics = {
        "behavior/actor_loss": actor_loss.detach(), "behavior/critic_loss": critic_loss.detach(),
        "behavior/actor_entropy": entropy.detach().mean(), "behavior/return_scale": scale,
        "behavior/value_mean": value.detach().mean(), "behavior/value_std": value.detach().std(),
        "behavior/return_mean": returns.detach().mean(), "behavior/return_std": returns.detach().std(),
        "behavior/imagined_reward": reward.detach().mean(),
    }
    return actor_loss, critic_loss, returns.detach(), metrics


def replay_returns(reward: torch.Tensor, is_first: torch.Tensor, is_terminal: torch.Tensor, boot: torch.Tensor,
                   gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lambda-returns of replayed sequences: the recorded rewards and terminations, bootstrapping from `boot`.

    A return stops at the end of the sequence and before an episode start (`is_first`), bootstrapping there; a
    state whose next step starts another episode, or that is terminal, has no target (weight 0).

    Args:
        reward, is_first, is_terminal: (B, T) as replayed (reward[t] came on arriving at step t); boot: the
            values to bootstrap from at each step (B, T).
    Returns:
        Returns R_0 .. R_{T-2} and their weights, each (B, T - 1).
    """
    B, T = reward.shape
    assert is_first.shape == is_terminal.shape == boot.shape == (B, T)
    first, terminal = is_first.float(), is_terminal.float()
    # lam_j for j = 1 .. T-1: cut where step j + 1 starts another episode, and at the end of the sequence.
    cut = torch.cat([first[:, 2:], torch.ones_like(first[:, :1])], 1)  # (B, T - 1)
    discount = gamma * (1.0 - terminal[:, 1:])  # (B, T - 1)
    returns = lambda_returns(reward[:, 1:], discount, boot, lam * (1.0 - cut))  # (B, T - 1)
    weight = (1.0 - first[:, 1:]) * (1.0 - terminal[:, :-1])  # (B, T - 1): steps t -> t + 1 within an episode
    return returns, weight


def replay_value_loss(critic: Critic, feat: torch.Tensor, reward: torch.Tensor, is_first: torch.Tensor,
                      is_terminal: torch.Tensor, boot: torch.Tensor, gamma: float, lam: float, grad: bool = False):
    """The critic's loss on replayed states toward `replay_returns` that bootstrap from the imagined return of
    each state (DreamerV3's replay value loss). Real trajectories carry a failure many steps ahead back to the
    states that led to it, where imagination sees `horizon` steps.

    Args:
        feat: posterior features (B, T, F); reward, is_first, is_terminal, boot: (B, T), see `replay_returns`.
        grad: the loss's gradient also reaches whatever computed `feat` (the world model), as DreamerV3 now does.
    Returns:
        The loss (scalar) and metrics.
    """
    returns, weight = replay_returns(reward, is_first, is_terminal, boot.detach(), gamma, lam)  # (B, T - 1)
    states = feat[:, :-1] if grad else feat[:, :-1].detach()  # (B, T - 1, F)
    loss = critic.loss(critic(states), returns, critic.slow_value(states))  # (B, T - 1)
    metrics = {"behavior/replay_return_mean": (returns * weight).sum() / weight.sum().clamp(min=1.0)}
    return (weight * loss).mean(), metrics
