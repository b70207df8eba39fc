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

from collections.abc import Callable, Iterator
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
)
from rssm.networks import (
    ARCH_2023,
    MLP,
    Arch,
    BlockLinear,
    LoopLinear,
    bind_loop_weight,
    gru_gates,
    gru_update,
    init_joint,
    init_weights,
    make_norm,
)


class RSSMState(NamedTuple):
    deter: torch.Tensor  # (..., D)
    stoch: torch.Tensor  # (..., G, C) one-hot with straight-through gradients
    logits: torch.Tensor  # (..., G, C) unimixed log-probabilities that z was drawn from


def features(state: RSSMState) -> torch.Tensor:
    """Model state as one vector: (..., D), (..., G, C) -> (..., D + G * C)."""
    return torch.cat([state.deter, state.stoch.flatten(-2)], -1)


def normalize_action(action: torch.Tensor) -> torch.Tensor:
    """a / max(1, |a|) per dimension, the divisor without gradient: a continuous sample beyond the env's range
    [-1, 1] enters the model at the edge of that range (DreamerV3, both versions). One-hot actions pass unchanged."""
    return action / torch.clamp(action.detach().abs(), min=1.0)


class RSSM(nn.Module):
    """Args:
        action_dim: size of the action vector.
        embed_dim: size of the encoded observation.
        deter: size D of the deterministic state.
        units: width of the hidden layers.
        groups, classes: the stochastic state has `groups` categoricals of `classes` classes.
        unimix: share of the uniform distribution mixed into prior and posterior.
        arch: norm and initial weights of every layer.
        blocks: 0: the sequence model of DreamerV3 2023, Linear(concat(z, a)) -> norm -> SiLU, then one GRU over
            concat(that, h) whose gate pre-activations are normalised. > 0: that of DreamerV3 now: h, z and a each
            embedded by Linear -> norm -> SiLU, then `dyn_layers` block-diagonal layers (norm, SiLU) and a
            block-diagonal GRU layer over `blocks` groups of h, each group seeing its own part of h and all three
            embeddings. D must be a multiple of `blocks`.
        prior_layers: hidden layers of the prior (2023: 1, now: 2).
        learned_initial: the state before an episode's first step is learned (2023: h = tanh(w), z the prior's
            mode at h), or zeros (now: h, z and the previous action are zero at an episode start).
        post_joint_init: the posterior's first layer, Linear(concat(h, embed)), held as two parts (`post_h`,
            `post_e`), draws its initial weights as the one layer it is (fan-in D + E, as upstream's), not as two
            layers of fan-in D and E.
    """

    def __init__(self, action_dim: int, embed_dim: int, deter: int, units: int, groups: int,
                 classes: int, unimix: float = 0.01, *, arch: Arch = ARCH_2023, blocks: int = 0, dyn_layers: int = 1,
                 prior_layers: int = 1, learned_initial: bool = True, post_joint_init: bool = False):
        super().__init__()
        assert blocks == 0 or deter % blocks == 0, (deter, blocks)
        self.deter, self.groups, self.classes, self.unimix = deter, groups, classes, unimix
        self.blocks, self.learned_initial = blocks, learned_initial
        stoch = groups * classes
        self.feat_dim = deter + stoch
        if blocks == 0:
            # Sequence model input: Linear(concat(z, a)) is split into a z part used inside the loop and an
            # a part applied to the whole sequence at once.
            self.img_in_z = LoopLinear(stoch, units)
            self.img_in_a = nn.Linear(action_dim, units, bias=arch.bias)
            self.img_in_norm = make_norm(arch, units)
            self.gru = LoopLinear(units + deter, 3 * deter)
            self.gru_norm = make_norm(arch, 3 * deter)
        else:
            self.dyn_h = LoopLinear(deter, units)
            self.dyn_z = LoopLinear(stoch, units)
            self.dyn_a = nn.Linear(action_dim, units, bias=arch.bias)
            self.dyn_bias = nn.Parameter(torch.zeros(2, units)) if arch.bias else None  # of dyn_h and dyn_z
            self.dyn_norms = nn.ModuleList(make_norm(arch, units) for _ in range(3))  # of h, z and a
            group = deter // blocks
            self.dyn_hidden = nn.ModuleList(
                BlockLinear(deter + blocks * 3 * units if i == 0 else deter, deter, blocks, bias=arch.bias)
                for i in range(dyn_layers))
            self.dyn_hidden_norms = nn.ModuleList(make_norm(arch, deter) for _ in range(dyn_layers))
            self.dyn_gru = BlockLinear(deter, 3 * deter, blocks, bias=arch.bias)
            self._group = group
        # Posterior: Linear(concat(h, embed)) split the same way; the embed part is batched.
        self.post_h = LoopLinear(deter, units)
        self.post_e = nn.Linear(embed_dim, units, bias=arch.bias)
        self.post_norm = make_norm(arch, units)
        self.post_out = LoopLinear(units, stoch)
        self.post_bias = nn.Parameter(torch.zeros(stoch))
        self.prior = MLP(deter, units, prior_layers, stoch, arch)
        if learned_initial:
            self.initial_deter = nn.Parameter(torch.zeros(deter))  # learned, through tanh
        init_weights(self, arch.fan)
        if post_joint_init:
            init_joint([self.post_h, self.post_e], arch.fan)
        self.compiled_obs_step = None  # `compile_steps`
        self.compiled_img_step = None  # `compile_steps` with prior=True
        self.cuda_graphs = False  # `compile_steps` with mode reduce-overhead

    def initial(self, batch_size: int) -> RSSMState:
        """The state before an episode's first step: learned (h = tanh(w), z = mode of the prior at h), or zeros."""
        if not self.learned_initial:
            ref = self.post_bias
            deter = ref.new_zeros(batch_size, self.deter)
            stoch = ref.new_zeros(batch_size, self.groups, self.classes)
            return RSSMState(deter, stoch, stoch)
        deter = torch.tanh(self.initial_deter)[None]  # (1, D)
        logits = self._prior_logits(deter)  # (1, G, C)
        stoch = mode_onehot(logits)
        return RSSMState(*(x.expand(batch_size, *x.shape[1:]) for x in (deter, stoch, logits)))

    def _prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        return self._prior(deter)[1]

    def _prior(self, deter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's probabilities and log-probabilities (unimixed) from h: (..., D) -> (..., G, C) each."""
        logits = self.prior(deter).unflatten(-1, (self.groups, self.classes))  # (..., G, C)
        return unimix_categorical(logits, self.unimix)

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """Prior logits from h alone: (..., D) -> (..., G, C)."""
        return self._prior_logits(deter)

    def _action_inputs(self, action: torch.Tensor) -> torch.Tensor:
        """The sequence model's action part, for any leading shape: (..., A) -> (..., units)."""
        action = normalize_action(action)
        if self.blocks == 0:
            return self.img_in_a(action)
        return F.silu(self.dyn_norms[2](self.dyn_a(action)))

    def _loop_weights(self) -> dict[str, torch.Tensor]:
        """The weights of the `LoopLinear` layers that the sequence model applies at each step, by name."""
        names = ("img_in_z", "gru") if self.blocks == 0 else ("dyn_h", "dyn_z")
        return {name: getattr(self, name).weight for name in names}

    def _bind(self, steps: int, rows: int) -> dict:
        """The loop's linear layers bound for `steps` steps of `rows` rows (`LoopLinear.bind`), and with blocks the
        tensors of `_block_weights` (its linear weight bound the same way)."""
        names = (*self._loop_weights(), "post_h", "post_out")
        loop = {name: getattr(self, name).bind(steps, rows) for name in names}
        if self.blocks:
            block = self._block_weights()
            loop.update(block, block_x=bind_loop_weight(block["block_x"], steps, rows))
        return loop

    def _plain(self) -> dict:
        """The loop's per-step layers (`_bind`'s), each a plain linear layer: for prior steps, and for posterior
        steps under torch.compile, which forms their weight gradients itself."""
        weights = self._loop_weights() | {name: getattr(self, name).weight for name in ("post_h", "post_out")}
        plain = {name: (lambda x, t, w=w: F.linear(x, w)) for name, w in weights.items()}
        if self.blocks:
            block = self._block_weights()
            plain.update(block, block_x=lambda x, t, w=block["block_x"]: F.linear(x, w))
        return plain

    def _block_weights(self) -> dict[str, torch.Tensor | tuple]:
        """With blocks, the parts of parameters that every step uses, taken apart once per loop: indexing a
        parameter at every step would give each step a zero-filled gradient of the whole parameter. The first block
        layer's weight (`_first_block_layer`) on the groups' parts of h, "block_h" (G, D/G, D/G), and on the
        embeddings as one linear layer's (D, 3 * units) weight, "block_x"; the biases of the h and z embeddings,
        "dyn_bias" (zeros without biases)."""
        weight = self.dyn_hidden[0].weight  # (G, D/G + 3u, D/G)
        w_x = weight[:, self._group:].permute(0, 2, 1).reshape(self.deter, -1)  # (G, D/G, 3u) -> (D, 3u)
        bias = self.dyn_bias.unbind(0) if self.dyn_bias is not None else (0.0, 0.0)  # (units,) each
        return {"block_h": weight[:, :self._group], "block_x": w_x, "dyn_bias": bias}

    def _sequence(self, deter: torch.Tensor, stoch: torch.Tensor, action_in: torch.Tensor, loop: dict,
                  t: int) -> torch.Tensor:
        """h_t from h_{t-1} (B, D), z_{t-1} (B, G, C) and the action part a_{t-1} (B, units)."""
        if self.blocks == 0:
            x = F.silu(self.img_in_norm(loop["img_in_z"](stoch.flatten(-2), t) + action_in))  # (B, units)
            return gru_update(self.gru_norm(loop["gru"](torch.cat([x, deter], -1), t)), deter)  # (B, D)
        bias = loop["dyn_bias"]
        x = torch.cat([F.silu(self.dyn_norms[0](loop["dyn_h"](deter, t) + bias[0])),
                       F.silu(self.dyn_norms[1](loop["dyn_z"](stoch.flatten(-2), t) + bias[1])), action_in], -1)
        B, G = deter.shape[0], self.blocks
        x = self._first_block_layer(deter, x, loop["block_h"], loop["block_x"], t)  # (B, D)
        x = F.silu(self.dyn_hidden_norms[0](x))
        for layer, norm in zip(self.dyn_hidden[1:], self.dyn_hidden_norms[1:], strict=True):
            x = F.silu(norm(layer(x)))
        gates = self.dyn_gru(x).view(B, G, 3, self._group)  # (B, G, 3, D / G): each group's [reset, cand, update]
        # unbind: one stacked gradient in backward, where three selects would fill three zero tensors
        reset, cand, update = (g.reshape(B, self.deter) for g in gates.unbind(2))
        return gru_gates(reset, cand, update, deter)

    def _first_block_layer(self, deter: torch.Tensor, x: torch.Tensor, w_h: torch.Tensor, block_x: Callable,
                           t: int) -> torch.Tensor:
        """`dyn_hidden[0]` on the groups' inputs concat(h_g, x) without forming them: (B, D), (B, 3 * units) ->
        (B, D). The part of each block that reads x is the same matrix for every row, so it is one product,
        `block_x(x, t)` (the loop's layer on `_block_weights`' (D, 3 * units) weight); w_h (G, D/G, D/G)."""
        layer, G, B = self.dyn_hidden[0], self.blocks, deter.shape[0]
        y = torch.bmm(deter.view(B, G, self._group).transpose(0, 1), w_h).transpose(0, 1)  # (B, G, D/G)
        y = y + block_x(x, t).view(B, G, self._group)  # (B, G, D/G)
        y = y.reshape(B, self.deter)
        return y + layer.bias if layer.bias is not None else y

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
        action_in = self._action_inputs(action).unbind(1)  # T x (B, units)
        embed_proj = self.post_e(embed).unbind(1)  # T x (B, units)
        # One uniform number per categorical for inverse-CDF sampling, drawn for all steps at once (on CPU
        # the same numbers as T per-step draws of `sample_onehot`).
        uniform = torch.rand(T, B, self.groups, 1, device=embed.device, dtype=embed.dtype)  # (T, B, G, 1)
        compiled = self.compiled_obs_step
        loop = self._bind(T, B) if compiled is None else None
        deter, stoch = state.deter, state.stoch
        deters, stochs, logits_all = [], [], []
        for t in range(T):
            inputs = (deter, stoch, first[:, t, None], init.deter, init.stoch, action_in[t], embed_proj[t], uniform[t])
            deter, stoch, logits = self._obs_step(*inputs, loop, t) if compiled is None else compiled(*inputs)
            deters.append(deter), stochs.append(stoch), logits_all.append(logits)
        post = RSSMState(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits_all, 1))
        return post, self._prior_logits(post.deter)  # prior batched over (B, T)

    def _obs_step(self, deter: torch.Tensor, stoch: torch.Tensor, reset: torch.Tensor, init_deter: torch.Tensor,
                  init_stoch: torch.Tensor, action_in: torch.Tensor, embed_proj: torch.Tensor, uniform: torch.Tensor,
                  loop: dict | None = None, t: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One posterior step of `observe`: h_{t-1} (B, D), z_{t-1} (B, G, C), the step's start flags (B, 1), the
        initial state's h and z, the action part (B, units), the observation part (B, units) and one uniform number
        per categorical (B, G, 1) -> h_t, z_t and the unimixed logits z_t was drawn from. `loop`: `_bind`'s layers
        (None: `_plain`'s, as under torch.compile, whose graph of one step is the same for every t)."""
        loop = self._plain() if loop is None else loop
        # Every step, so that no host sync asks which steps hold a start.
        deter = torch.where(reset, init_deter, deter)  # (B, D)
        stoch = torch.where(reset[..., None], init_stoch, stoch)  # (B, G, C)
        deter = self._sequence(deter, stoch, action_in, loop, t)  # (B, D)
        u = F.silu(self.post_norm(loop["post_h"](deter, t) + embed_proj))  # (B, units)
        logits = (loop["post_out"](u, t) + self.post_bias).unflatten(-1, (self.groups, self.classes))
        probs, logits = unimix_categorical(logits, self.unimix)  # (B, G, C) each
        stoch = straight_through(inverse_cdf_index(probs, uniform), probs)  # (B, G, C)
        return deter, stoch, logits

    def compile_steps(self, backend: str | Callable | None, mode: str = "default", prior: bool = False) -> None:
        """torch.compile the posterior step of `observe` with `backend` (static shapes: one graph, forward and
        backward, per batch size and grad mode), or undo it with None. The loop's 64 steps of 16 rows are hundreds
        of small operator calls each, which the compiled step fuses into a few kernels. With `prior`, also the
        sampled prior step of `rollout` (imagination: 15 steps over 1,024 states, some seventy operator calls
        each, each a kernel launch on a GPU; on a CPU compiling it did not pay).

        mode "reduce-overhead" also runs each step, forward and backward, as a CUDA graph on a CUDA device (one
        launch instead of dozens; torch's CUDA graph trees record them in the first updates and replay them after).
        Such a graph's outputs live in a pool that its next run overwrites, so the step's outputs are copied out
        (three small copies per step). On a CPU the mode compiles as the default one does."""
        self.cuda_graphs = backend is not None and mode == "reduce-overhead"
        self.compiled_obs_step = self.compiled_img_step = None
        if backend is None:
            return

        def compiled(fn: Callable) -> Callable:
            step = torch.compile(fn, backend=backend, dynamic=False, mode=None if mode == "default" else mode)
            return (lambda *a: tuple(x.clone() for x in step(*a))) if self.cuda_graphs else step

        self.compiled_obs_step = compiled(self._obs_step)
        if prior:
            self.compiled_img_step = compiled(self._img_step)

    def _img_step(self, deter: torch.Tensor, stoch: torch.Tensor,
                  action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`img_step` with a sample, as tensors (the function `compile_steps` compiles): h_{t-1} (B, D), z_{t-1}
        (B, G, C), a_{t-1} (B, A) -> h_t, z_t, the prior's unimixed logits."""
        return tuple(self.img_step(RSSMState(deter, stoch, None), action))  # logits: not read

    def img_step(self, state: RSSMState, action: torch.Tensor, sample: bool = True,
                 plain: dict | None = None) -> RSSMState:
        """One prior step: (B, ...) state and (B, A) action -> next (B, ...) state. `plain`: `_plain()`, made
        once by a caller that takes many steps."""
        plain = self._plain() if plain is None else plain
        deter = self._sequence(state.deter, state.stoch, self._action_inputs(action), plain, 0)
        probs, logits = self._prior(deter)  # (B, G, C) each
        stoch = sample_onehot(probs) if sample else straight_through(probs.argmax(-1), probs)
        return RSSMState(deter, stoch, logits)

    def rollout(self, state: RSSMState, horizon: int,
                policy: Callable[[RSSMState], torch.Tensor] | None = None,
                actions: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, RSSMState]]:
        """Prior steps from `state` (B, ...), one at a time: yields the action taken (B, A) and the state it led
        to, `horizon` times. Actions come from `policy(state) -> (B, A)` or from `actions` (B, horizon, A)."""
        if (policy is None) == (actions is None):
            raise ValueError("imagine needs exactly one of policy and actions")
        return self._rollout(state, horizon, policy, actions)

    def _rollout(self, state, horizon, policy, actions) -> Iterator[tuple[torch.Tensor, RSSMState]]:
        plain, compiled = self._plain(), self.compiled_img_step
        for t in range(horizon):
            action = policy(state) if policy is not None else actions[:, t]
            if compiled is None:
                state = self.img_step(state, action, plain=plain)
            else:
                state = RSSMState(*compiled(state.deter, state.stoch, action))
            yield action, state

    def imagine(self, state: RSSMState, horizon: int,
                policy: Callable[[RSSMState], torch.Tensor] | None = None,
                actions: torch.Tensor | None = None) -> tuple[RSSMState, torch.Tensor]:
        """Prior rollout from `state` (B, ...) for `horizon` steps (`rollout`).

        Returns the imagined states (B, horizon, ...) and the actions taken (B, horizon, A).
        """
        taken, states = zip(*self.rollout(state, horizon, policy, actions), strict=True)
        stacked = RSSMState(*(torch.stack(x, 1) for x in zip(*states, strict=True)))
        return stacked, torch.stack(taken, 1)
