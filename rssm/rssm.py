"""Recurrent state-space model: deterministic GRU state h and categorical stochastic state z.

How a sequence lines up in time (index t of every (B, T, ...) tensor):

    action[t]    a_{t-1}: the action that led to obs[t] (zeros where is_first[t])
    is_first[t]  obs[t] starts an episode: h, z and the previous action are reset first

        h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})     sequence model      (the only sequential part)
        z_t ~ q(z | h_t, embed(obs_t))           posterior           (inside the loop: z_t feeds h_{t+1})
        z_t ~ p(z | h_t)                         prior               (batched over B x T after the loop)

            obs[0]        obs[1]        obs[2]
              |             |             |
    h_0 --> [h_0,z_0] --> [h_1,z_1] --> [h_2,z_2]
              ^  action[1] ^  action[2] ^
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rssm.distributions import (
    inverse_cdf_index,
    mode_onehot,
    sample_onehot,
    straight_through,
    unimix_categorical,
    unimix_logits,
)
from rssm.networks import MLP, NORM_EPS, LoopLinear, gru_update, init_weights


class RSSMState(NamedTuple):
    deter: torch.Tensor  # (..., D)
    stoch: torch.Tensor  # (..., G, C) one-hot with straight-through gradients
    logits: torch.Tensor  # (..., G, C) unimixed log-probabilities that z was drawn from


def features(state: RSSMState) -> torch.Tensor:
    """Model state as one vector: (..., D), (..., G, C) -> (..., D + G * C)."""
    return torch.cat([state.deter, state.stoch.flatten(-2)], -1)


class RSSM(nn.Module):
    """Args:
        action_dim: size of the action vector.
        embed_dim: size of the encoded observation.
        deter: size D of the deterministic state.
        units: width of the hidden layers.
        groups, classes: the stochastic state has `groups` categoricals of `classes` classes.
        unimix: share of the uniform distribution mixed into prior and posterior.
    """

    def __init__(self, action_dim: int, embed_dim: int, deter: int, units: int, groups: int,
                 classes: int, unimix: float = 0.01):
        super().__init__()
        self.deter, self.groups, self.classes, self.unimix = deter, groups, classes, unimix
        stoch = groups * classes
        self.feat_dim = deter + stoch
        # Sequence model input: Linear(concat(z, a)) is split into a z part used inside the loop and an
        # a part applied to the whole sequence at once.
        self.img_in_z = LoopLinear(stoch, units)
        self.img_in_a = nn.Linear(action_dim, units, bias=False)
        self.img_in_norm = nn.LayerNorm(units, eps=NORM_EPS)
        self.gru = LoopLinear(units + deter, 3 * deter)
        self.gru_norm = nn.LayerNorm(3 * deter, eps=NORM_EPS)
        # Posterior: Linear(concat(h, embed)) split the same way; the embed part is batched.
        self.post_h = LoopLinear(deter, units)
        self.post_e = nn.Linear(embed_dim, units, bias=False)
        self.post_norm = nn.LayerNorm(units, eps=NORM_EPS)
        self.post_out = LoopLinear(units, stoch)
        self.post_bias = nn.Parameter(torch.zeros(stoch))
        self.prior = MLP(deter, units, 1, stoch)
        self.initial_deter = nn.Parameter(torch.zeros(deter))  # learned, through tanh
        init_weights(self)

    def initial(self, batch_size: int) -> RSSMState:
        """Learned initial state: h = tanh(w), z = mode of the prior at h."""
        deter = torch.tanh(self.initial_deter)[None]  # (1, D)
        logits = self._prior_logits(deter)  # (1, G, C)
        stoch = mode_onehot(logits)
        return RSSMState(*(x.expand(batch_size, *x.shape[1:]) for x in (deter, stoch, logits)))

    def _prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        logits = self.prior(deter).unflatten(-1, (self.groups, self.classes))  # (..., G, C)
        return unimix_logits(logits, self.unimix)

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """Prior logits from h alone: (..., D) -> (..., G, C)."""
        return self._prior_logits(deter)

    def _sequence_input(self, stoch_proj: torch.Tensor, action_proj: torch.Tensor) -> torch.Tensor:
        """GRU input from the two halves of Linear(concat(z, a)): (B, units) each -> (B, units)."""
        return F.silu(self.img_in_norm(stoch_proj + action_proj))

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: RSSMState | None = None) -> tuple[RSSMState, torch.Tensor]:
        """Posterior rollout over a sequence.

        Args:
            embed: encoded observations, (B, T, E).
            action: previous actions a_{t-1}, (B, T, A).
            is_first: episode starts, (B, T) bool or float.
            state: state before the first step, batch (B, ...); None starts from `initial`.
        Returns:
            Posterior states with (B, T, ...) fields, and prior logits (B, T, G, C).
        """
        B, T = is_first.shape
        init = self.initial(B)
        state = init if state is None else state
        first = is_first.to(torch.bool)  # (B, T)
        action = action * (1.0 - first.to(action.dtype)).unsqueeze(-1)  # (B, T, A): no action before a start
        # Everything that does not depend on h_{t-1} is computed for all steps before the loop; unbind
        # makes per-step views whose backward is one stack, not T zero-filled (B, T, units) gradients.
        action_proj = self.img_in_a(action).unbind(1)  # T x (B, units)
        embed_proj = self.post_e(embed).unbind(1)  # T x (B, units)
        # One uniform number per categorical for inverse-CDF sampling, drawn for all steps at once (on CPU
        # the same numbers as T per-step draws of `sample_onehot`).
        uniform = torch.rand(T, B, self.groups, 1, device=embed.device, dtype=embed.dtype)  # (T, B, G, 1)
        resets = first.any(0).tolist()  # one host sync, so that steps without a start skip the reset
        img_in_z, gru = self.img_in_z.bind(T, B), self.gru.bind(T, B)
        post_h, post_out = self.post_h.bind(T, B), self.post_out.bind(T, B)
        deter, stoch = state.deter, state.stoch
        deters, stochs, logits_all = [], [], []
        for t in range(T):
            if resets[t]:
                reset = first[:, t, None]  # (B, 1)
                deter = torch.where(reset, init.deter, deter)  # (B, D)
                stoch = torch.where(reset[..., None], init.stoch, stoch)  # (B, G, C)
            x = self._sequence_input(img_in_z(stoch.flatten(-2), t), action_proj[t])  # (B, units)
            deter = gru_update(self.gru_norm(gru(torch.cat([x, deter], -1), t)), deter)  # (B, D)
            u = F.silu(self.post_norm(post_h(deter, t) + embed_proj[t]))  # (B, units)
            logits = (post_out(u, t) + self.post_bias).unflatten(-1, (self.groups, self.classes))
            probs, logits = unimix_categorical(logits, self.unimix)  # (B, G, C) each
            stoch = straight_through(inverse_cdf_index(probs, uniform[t]), probs)  # (B, G, C)
            deters.append(deter), stochs.append(stoch), logits_all.append(logits)
        post = RSSMState(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits_all, 1))
        return post, self._prior_logits(post.deter)  # prior batched over (B, T)

    def img_step(self, state: RSSMState, action: torch.Tensor, sample: bool = True) -> RSSMState:
        """One prior step: (B, ...) state and (B, A) action -> next (B, ...) state."""
        x = self._sequence_input(self.img_in_z(state.stoch.flatten(-2)), self.img_in_a(action))
        deter = gru_update(self.gru_norm(self.gru(torch.cat([x, state.deter], -1))), state.deter)
        logits = self._prior_logits(deter)
        stoch = sample_onehot(logits) if sample else mode_onehot(logits)
        return RSSMState(deter, stoch, logits)

    def imagine(self, state: RSSMState, horizon: int,
                policy: Callable[[RSSMState], torch.Tensor] | None = None,
                actions: torch.Tensor | None = None) -> tuple[RSSMState, torch.Tensor]:
        """Prior rollout from `state` (B, ...) for `horizon` steps.

        Actions come from `policy(state) -> (B, A)` or from `actions` (B, horizon, A).
        Returns the imagined states (B, horizon, ...) and the actions taken (B, horizon, A).
        """
        if (policy is None) == (actions is None):
            raise ValueError("imagine needs exactly one of policy and actions")
        states, taken = [], []
        for t in range(horizon):
            action = policy(state) if policy is not None else actions[:, t]
            state = self.img_step(state, action)
            states.append(state), taken.append(action)
        stacked = RSSMState(*(torch.stack(x, 1) for x in zip(*states, strict=True)))
        return stacked, torch.stack(taken, 1)
