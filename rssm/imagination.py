"""A trained world model in its env's own terms: observations and actions as the env gives and takes them.

`EnvModel` wraps a `WorldModel` with its run's `EnvSpec`. Observations go in raw (vectors as the env returns them,
images uint8) and come out the same way (vectors unsymlogged, images uint8); actions are the env's (an index,
indices or values within the action bounds). `imagine` rolls the model forward from real observations; `start`,
`step` and `predict` are the pieces that `rssm.dream_env.DreamEnv` steps with.

Time runs as in a gymnasium episode: obs[0], action[0], obs[1], ..., where action[t] is what was taken after
obs[t]. The model's own sequences pair each observation with the action before it (`rssm.rssm.RSSM.observe`);
the conversion happens here.

What a user hands to the Python API (`imagine`, `start`, `rssm.api.Policy.predict`, `DreamEnv.step`) is checked
once, on the host, by `check_obs` and `check_actions`: a ValueError of one line, naming the argument, before any
computation; past them nothing is checked again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from rssm.behavior import Actor
from rssm.checkpoint import seeded
from rssm.distributions import inverse_cdf_index, onehot, symexp
from rssm.envs import EnvSpec, from_env_action, to_env_action
from rssm.rssm import RSSMState, features
from rssm.world_model import WorldModel


class Imagined(NamedTuple):
    """What `EnvModel.imagine` predicts for H steps after the context, batch B."""

    obs: Any  # the env's observations (B, H, ...): an array, or a dict of arrays for a Dict space
    reward: np.ndarray  # (B, H) the reward head's mean for the step that led to each observation
    cont: np.ndarray  # (B, H) the probability that the episode goes on after each observation (continue head)
    actions: Any  # (B, H, ...) the env actions taken, given or chosen by the policy


# --- what the API takes from a user, checked once where it is handed over (ValueError, one line) ---

def describe(value: Any) -> str:
    """A value a user gave, for an error message: its repr where that is one short line, else 'an array' or its
    type."""
    text = repr(value)
    if len(text) <= 60 and "\n" not in text:
        return text
    return "an array" if hasattr(value, "shape") else f"a {type(value).__name__}"


def as_array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as e:  # ragged lists, a GPU tensor
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} must be an array; got {describe(value)}, which is not one ({detail})") from None


def _shape_text(axes: tuple[int | str, ...]) -> str:
    return f"({', '.join(map(str, axes))}{',' if len(axes) == 1 else ''})"


def check_obs(obs: Any, shapes: dict[str, tuple[int, ...]], dict_obs: bool, name: str,
              axes: int | None = None) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """Env observations a user gave, checked and cast: vectors real and finite (as float32), images integers in
    [0, 255] (as uint8), each key of `shapes` there and of its shape after the same leading axes (`axes` of them;
    None: none for one observation or one for a batch of N), no axis empty. Other keys are left out.

    Returns:
        The arrays per key of `shapes`, and their leading axes.
    Raises:
        ValueError: one line naming `name` (and the key), what was expected and what was given.
    """
    first = next(iter(shapes.values()))
    if dict_obs != isinstance(obs, Mapping):
        want = f"a dict of arrays with the keys {', '.join(map(repr, shapes))}" if dict_obs else \
            f"an array of shape {_shape_text(first)} (the env's observation is not a dict)"
        raise ValueError(f"{name} must be {want}; got {'a dict' if isinstance(obs, Mapping) else describe(obs)}")
    obs = obs if dict_obs else {"obs": obs}
    out, lead, seen = {}, None, ("", ())  # seen: the first key's label and shape
    for key, shape in shapes.items():
        label = f"{name}[{key!r}]" if dict_obs else name
        if key not in obs:
            raise ValueError(f"{name} lacks the key {key!r}: expected the keys {', '.join(map(repr, shapes))}; got "
                             f"{', '.join(map(repr, obs))}")
        value = as_array(obs[key], label)
        image = len(shape) == 3
        if value.dtype.kind not in ("iu" if image else "iuf"):
            raise ValueError(f"{label} must be {'integer pixels (uint8)' if image else 'real numbers'}; got dtype "
                             f"{value.dtype}")
        n = value.ndim - len(shape)
        if n < 0 or value.shape[n:] != shape or (n not in (0, 1) if axes is None else n != axes):
            want = f"{_shape_text(shape)}, or {_shape_text(('N', *shape))} for a batch of N" if axes is None else \
                _shape_text((*"BT"[:axes], *shape))
            raise ValueError(f"observation {key!r} has shape {value.shape}: {label} must have the shape {want}")
        if lead is not None and value.shape[:n] != lead:
            raise ValueError(f"{seen[0]} and {label} must have the same leading axes (one observation, or a batch of "
                             f"N of each); got shapes {seen[1]} and {value.shape}")
        if lead is None:
            lead, seen = value.shape[:n], (label, value.shape)
        if 0 in lead:
            raise ValueError(f"{label} must hold at least one observation; got shape {value.shape}")
        out[key] = _cast(value, label, image)
    return out, lead


def _cast(value: np.ndarray, label: str, image: bool) -> np.ndarray:
    if image:
        if value.dtype != np.uint8 and (value.min() < 0 or value.max() > 255):
            raise ValueError(f"{label} must be pixels in [0, 255]; got values from {value.min()} to {value.max()}")
        return value.astype(np.uint8, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = value.astype(np.float32, copy=False)
    finite = np.isfinite(cast)
    if not finite.all():
        raise ValueError(f"{label} must be finite numbers (as float32); got nan or inf in {(~finite).sum()} of its "
                         f"{finite.size} values")
    return cast


def action_space_text(spec: EnvSpec) -> str:
    if not spec.discrete:
        return f"Box({spec.low.tolist()} to {spec.high.tolist()})"
    n = spec.action_dims
    return f"Discrete({n[0]})" if len(n) == 1 else f"MultiDiscrete({list(n)})"


def check_actions(actions: Any, spec: EnvSpec, lead: tuple[int | str, ...], name: str) -> np.ndarray:
    """Env actions a user gave, checked against the env's action space: indices within it of an integer dtype
    that casts to int64 (Discrete, MultiDiscrete; floats, bools and uint64 are refused, as `Discrete.contains`
    refuses them), or real numbers, finite and within a Box's bounds (values outside are refused, not clipped: as
    `Box.contains` says). Any real dtype is taken for a Box (`Box.contains` refuses float64 for a float32 Box).

    Args:
        lead: the leading axes: a length, or a name for an axis of any length >= 1.
    Returns:
        The actions as an array (*lead, ...), in their own dtype.
    Raises:
        ValueError: one line naming `name`, what was expected and what was given.
    """
    a = as_array(actions, name)
    space = action_space_text(spec)
    indices = a.dtype.kind in "iu" and np.can_cast(a.dtype, np.int64)
    if not (indices if spec.discrete else a.dtype.kind in "biuf"):
        what = "integers of a dtype within int64 (indices into" if spec.discrete else "real numbers (values of"
        raise ValueError(f"{name} must be {what} the env's {space}); got {describe(actions)} of dtype {a.dtype}")
    segments = len(spec.action_dims)
    want = (*lead, *(() if spec.discrete and segments == 1 else (segments if spec.discrete else spec.action_dim,)))
    if a.ndim != len(want) or any(s != w if isinstance(w, int) else s < 1 for s, w in zip(a.shape, want, strict=True)):
        free = [w for w in want if isinstance(w, str)]
        extra = f" with {', '.join(free)} >= 1" if free else ""
        raise ValueError(f"{name} must have the shape {_shape_text(want)}{extra} (the env's {space}); got "
                         f"{describe(actions)} of shape {a.shape}")
    if spec.discrete:
        n = spec.action_dims[0] if segments == 1 else np.asarray(spec.action_dims)  # (segments,)
        inside = (a >= 0) & (a < n)
        where = f"[0, {n})" if segments == 1 else f"[0, n) per segment, n = {list(spec.action_dims)}"
        where = f"{where} (the env's {space})"
    else:
        inside = (a >= spec.low) & (a <= spec.high)  # nan is outside
        where = f"the env's bounds {spec.low.tolist()} to {spec.high.tolist()} (refused outside them, not clipped)"
    if not inside.all():
        raise ValueError(f"{name} must be within {where}; got {a.reshape(-1)[np.flatnonzero(~inside)[0]]}")
    return a


class EnvModel:
    """A run's world model (`module`) with its env spec (`spec`) and, for `agent=dreamer`, its actor.

    Args:
        module: the trained `WorldModel`; its observation keys are those it models (the env may have more).
        spec: the env spec of the run.
        actor: the run's actor, for `imagine(policy="actor")`; None for a world-model-only run.
        cont_scale: what the continue head learned for a step that goes on (`rssm.build.continue_target`: 1, or
            the discount today's DreamerV3 folds into it); its output over this is the probability of going on.
    """

    def __init__(self, module: WorldModel, spec: EnvSpec, actor: Actor | None = None, cont_scale: float = 1.0):
        self.module, self.spec, self.actor, self.cont_scale = module, spec, actor, cont_scale
        self.device = module.bins.device
        self.dict_obs = list(spec.obs_shapes) != ["obs"]  # the env's observations are a dict
        self.shapes = {k: spec.obs_shapes[k] for k in module.obs_keys}  # the keys the model sees

    # --- conversions between the env's terms and the model's ---

    def obs_to_model(self, obs: Any, lead: int) -> dict[str, torch.Tensor]:
        """The modelled keys of env observations with `lead` leading axes, as tensors on the model's device.

        Raises:
            ValueError: `check_obs` refuses them.
        """
        arrays, _ = check_obs(obs, self.shapes, self.dict_obs, "obs", lead)
        return self._tensors(arrays)

    def _tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}

    def obs_from_model(self, decoded: dict[str, torch.Tensor]) -> Any:
        """Decoder outputs (..., *shape) per key -> the env's observations: images uint8, vectors float32 in
        the env's own units (the decoder predicts symlog of them)."""
        out = {}
        for key, x in decoded.items():
            if key in self.module.image_keys:
                out[key] = (x.float() * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            else:
                out[key] = symexp(x.float()).cpu().numpy()
        return out if self.dict_obs else out["obs"]

    def actions_to_model(self, actions: Any) -> torch.Tensor:
        """Env actions (..., ) or (..., segments) or (..., A) -> the model's action vectors (..., A). Unchecked:
        `check_actions` checks what a user gives."""
        return torch.as_tensor(from_env_action(actions, self.spec), device=self.device)

    # --- the pieces ---

    @torch.no_grad()
    def start(self, obs: Any, actions: Any | None = None) -> RSSMState:
        """The model state after seeing real observations from an episode's start: obs (B, T, ...) and the
        actions between them (B, T - 1, ...), or obs (B, ...) for the first observation of B episodes.

        Returns:
            The posterior state (batch B) after the last observation.
        Raises:
            ValueError: observations or actions that `check_obs` or `check_actions` refuse.
        """
        lead = 2 if actions is not None else 1
        arrays, axes = check_obs(obs, self.shapes, self.dict_obs, "obs", lead)
        B, T = axes if lead == 2 else (axes[0], 1)
        taken = None if actions is None else check_actions(actions, self.spec, (B, T - 1), "actions")
        return self._start(arrays, taken)

    def _start(self, arrays: dict[str, np.ndarray], taken: np.ndarray | None) -> RSSMState:
        """`start` from checked observations (B, T, ...) and the env actions between them (B, T - 1, ...), or
        observations (B, ...) and None."""
        data = self._tensors(arrays)
        if taken is None:
            data = {k: v[:, None] for k, v in data.items()}  # (B, 1, ...)
        B, T = next(iter(data.values())).shape[:2]
        before = torch.zeros(B, T, self.spec.action_dim, device=self.device)  # (B, T, A): the action before each obs
        if taken is not None:
            before[:, 1:] = self.actions_to_model(taken)  # (B, T - 1, A)
        is_first = torch.zeros(B, T, dtype=torch.bool, device=self.device)
        is_first[:, 0] = True
        post, _ = self.module.rssm.observe(self.module.encode(data), before, is_first)
        return RSSMState(*(x[:, -1] for x in post))

    @torch.no_grad()
    def step(self, state: RSSMState, actions: torch.Tensor, uniform: torch.Tensor | None = None) -> RSSMState:
        """One prior step from `state` (batch B) under model actions (B, A). `uniform` (B, G, 1) in [0, 1) picks
        the latents by inverse CDF (from the caller's generator); None draws them from torch's."""
        rssm = self.module.rssm
        if uniform is None:
            return rssm.img_step(state, actions)
        nxt = rssm.img_step(state, actions, sample=False)  # deter and logits; z drawn below
        index = inverse_cdf_index(nxt.logits.softmax(-1), uniform)  # (B, G)
        return nxt._replace(stoch=onehot(index, nxt.logits))

    @torch.no_grad()
    def predict(self, state: RSSMState) -> tuple[Any, np.ndarray, np.ndarray]:
        """What the model expects at `state` (batch ...): the env's observation, reward (...) and the probability
        (...) that the episode goes on."""
        feat = features(state)
        reward = self.module.predicted_reward(feat).float().cpu().numpy()
        cont = torch.sigmoid(self.module.cont(feat).squeeze(-1)).float().cpu().numpy()
        cont = np.clip(cont / self.cont_scale, 0.0, 1.0)
        return self.obs_from_model(self.module.decode(feat)), reward, cont

    # --- the whole rollout ---

    @torch.no_grad()
    def imagine(self, context_obs: Any, context_actions: Any, actions: Any | None = None,
                policy: str | Callable[[Any], Any] | None = None, horizon: int | None = None,
                deterministic: bool = False, seed: int | None = None) -> Imagined:
        """Roll the model forward from real observations, batched.

        Args:
            context_obs: B episodes' first T >= 1 observations (B, T, ...), an array or a dict of arrays as the
                env returns them. Each sequence starts an episode: the model starts from its initial state there.
            context_actions: the env actions taken between them (B, T - 1, ...).
            actions: the env actions (B, H, ...) to take after the last context observation; or else
            policy: "actor" (the run's actor acting on the model state) or a function from a batch of the env's
                observations (B, ...) to env actions (B, ...), called on the last real observation first and
                then on each predicted one; with `horizon` steps.
            deterministic: the actor's mode instead of a sample (policy="actor").
            seed: draws the latents (and the actor's samples) from this seed, leaving torch's random state as it
                was; None uses torch's.
        Returns:
            `Imagined`: the observations, rewards and continue probabilities of the H steps, and the actions.
        Raises:
            ValueError: in one line, before anything is computed: both or neither of actions and policy, a policy
                that is neither "actor" nor a function, a horizon that is not an int >= 1, observations that are
                not of the env's shapes (B, T, ...) with B >= 1 or not finite, actions outside the env's action
                space or not (B, T - 1, ...) and (B, H, ...) with H >= 1; while imagining, actions from a policy
                function that are not (B, ...) in the env's action space.
        """
        horizon = self._check_plan(actions, policy, horizon, seed)
        arrays, (B, T) = check_obs(context_obs, self.shapes, self.dict_obs, "context_obs", 2)
        context = check_actions(context_actions, self.spec, (B, T - 1), "context_actions")
        if actions is not None:
            actions = check_actions(actions, self.spec, (B, "H"), "actions")
            if horizon is not None and horizon != actions.shape[1]:
                raise ValueError(f"horizon must be None or the actions' H = {actions.shape[1]}; got {horizon!r}")
            horizon = actions.shape[1]
        with seeded(None if seed is None else int(seed), self.device):
            state = self._start(arrays, context)
            if actions is not None:
                taken = self.actions_to_model(actions)  # (B, H, A)
            last = {k: v[:, -1] for k, v in arrays.items()}  # the env's dtypes, as the predicted ones
            last = last if self.dict_obs else last["obs"]
            states, env_actions = [], []
            for t in range(horizon):
                if actions is not None:
                    action = taken[:, t]
                elif policy == "actor":
                    dist = self.actor(features(state))
                    action = dist.mode() if deterministic else dist.sample()
                else:
                    action = self.actions_to_model(check_actions(policy(last), self.spec, (B,), "policy's actions"))
                state = self.module.rssm.img_step(state, action.float())
                states.append(state)
                env_actions.append(to_env_action(action.float().cpu().numpy(), self.spec))
                if callable(policy):
                    last = self.predict(state)[0]
        stacked = RSSMState(*(torch.stack(x, 1) for x in zip(*states, strict=True)))  # (B, H, ...)
        obs, reward, cont = self.predict(stacked)
        return Imagined(obs, reward, cont, np.stack(env_actions, 1))

    def _check_plan(self, actions: Any, policy: Any, horizon: Any, seed: Any) -> int | None:
        """`imagine`'s choice of actions, policy, horizon and seed, checked: the horizon of a policy."""
        if (actions is None) == (policy is None):
            given = "neither" if actions is None else "both"
            raise ValueError(f"imagine needs either actions or a policy; got {given}")
        if policy is not None and not (callable(policy) or (isinstance(policy, str) and policy == "actor")):
            raise ValueError(f"policy must be 'actor' or a function from the env's observations (B, ...) to its "
                             f"actions (B, ...); got {describe(policy)}")
        if isinstance(policy, str) and self.actor is None:
            raise ValueError("policy='actor' needs the run's actor, and this run has none (agent=world_model): give "
                             "actions or a policy function")
        whole = isinstance(horizon, (int, np.integer)) and not isinstance(horizon, (bool, np.bool_))
        if policy is not None and not (whole and horizon >= 1):
            raise ValueError(f"horizon must be an int >= 1 (the steps a policy takes); got {describe(horizon)}")
        if horizon is not None and not whole:
            raise ValueError(f"horizon must be None or an int; got {describe(horizon)}")
        if seed is not None and not (isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_))):
            raise ValueError(f"seed must be an int or None; got {describe(seed)}")
        return None if horizon is None else int(horizon)
