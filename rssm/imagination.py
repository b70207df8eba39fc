"""A trained world model in its env's own terms: observations and actions as the env gives and takes them.

`EnvModel` wraps a `WorldModel` with its run's `EnvSpec`. Observations go in raw (vectors as the env returns them,
images uint8) and come out the same way (vectors unsymlogged, images uint8); actions are the env's (an index,
indices or values within the action bounds). `imagine` rolls the model forward from real observations; `start`,
`step` and `predict` are the pieces that `rssm.dream_env.DreamEnv` steps with.

Time runs as in a gymnasium episode: obs[0], action[0], obs[1], ..., where action[t] is what was taken after
obs[t]. The model's own sequences pair each observation with the action before it (`rssm.rssm.RSSM.observe`);
the conversion happens here.
"""

from __future__ import annotations

from collections.abc import Callable
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

    # --- conversions between the env's terms and the model's ---

    def obs_to_model(self, obs: Any, lead: int) -> dict[str, torch.Tensor]:
        """The modelled keys of env observations with `lead` leading axes, as tensors on the model's device."""
        obs = obs if isinstance(obs, dict) else {"obs": obs}
        out = {}
        for key in self.module.obs_keys:
            if key not in obs:
                raise ValueError(f"the observations lack the key {key!r} that the world model sees")
            shape = self.spec.obs_shapes[key]
            value = np.asarray(obs[key])
            if value.shape[lead:] != shape or value.ndim != lead + len(shape):
                raise ValueError(f"observation {key!r} has shape {value.shape}: expected {lead} leading axes and "
                                 f"then {shape}")
            out[key] = torch.as_tensor(value.astype(np.uint8 if len(shape) == 3 else np.float32), device=self.device)
        return out

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
        """Env actions (..., ) or (..., segments) or (..., A) -> the model's action vectors (..., A)."""
        return torch.as_tensor(from_env_action(actions, self.spec), device=self.device)

    # --- the pieces ---

    @torch.no_grad()
    def start(self, obs: Any, actions: Any | None = None) -> RSSMState:
        """The model state after seeing real observations from an episode's start: obs (B, T, ...) and the
        actions between them (B, T - 1, ...), or obs (B, ...) for the first observation of B episodes.

        Returns:
            The posterior state (batch B) after the last observation.
        """
        lead = 2 if actions is not None else 1
        data = self.obs_to_model(obs, lead)
        if lead == 1:
            data = {k: v[:, None] for k, v in data.items()}  # (B, 1, ...)
        B, T = next(iter(data.values())).shape[:2]
        before = torch.zeros(B, T, self.spec.action_dim, device=self.device)  # (B, T, A): the action before each obs
        if actions is not None:
            taken = self.actions_to_model(actions)  # (B, T - 1, A)
            if taken.shape[:2] != (B, T - 1):
                raise ValueError(f"{T} observations of {B} episodes need actions with leading axes ({B}, {T - 1}), "
                                 f"got {tuple(taken.shape[:2])}")
            before[:, 1:] = taken
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
        """
        if (actions is None) == (policy is None):
            raise ValueError("imagine needs either actions or a policy")
        if policy is not None and (horizon is None or horizon < 1):
            raise ValueError("a policy needs horizon >= 1 steps")
        if policy == "actor" and self.actor is None:
            raise ValueError("this run has no actor (agent=world_model): give actions or a policy function")
        with seeded(seed, self.device):
            state = self.start(context_obs, context_actions)
            if actions is not None:
                taken = self.actions_to_model(actions)  # (B, H, A)
                horizon = taken.shape[1]
            last = context_obs
            last = {k: np.asarray(v)[:, -1] for k, v in last.items()} if isinstance(last, dict) else \
                np.asarray(last)[:, -1]
            states, env_actions = [], []
            for t in range(horizon):
                if actions is not None:
                    action = taken[:, t]
                elif policy == "actor":
                    dist = self.actor(features(state))
                    action = dist.mode() if deterministic else dist.sample()
                else:
                    action = self.actions_to_model(policy(last))
                state = self.module.rssm.img_step(state, action.float())
                states.append(state)
                env_actions.append(to_env_action(action.float().cpu().numpy(), self.spec))
                if callable(policy):
                    last = self.predict(state)[0]
        stacked = RSSMState(*(torch.stack(x, 1) for x in zip(*states, strict=True)))  # (B, H, ...)
        obs, reward, cont = self.predict(stacked)
        return Imagined(obs, reward, cont, np.stack(env_actions, 1))
