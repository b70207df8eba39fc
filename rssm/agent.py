"""The agent: owns the optimizers, turns a replay batch into one update, and picks actions."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from rssm.behavior import (
    ActionDist,
    Actor,
    BehaviorSettings,
    Critic,
    ReturnNormalizer,
    behavior_losses,
    imagine,
    replay_value_loss,
)
from rssm.rssm import RSSMState, features
from rssm.world_model import LossScales, WorldModel


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    eps: float
    grad_clip: float  # global gradient-norm clip


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter],
          clip: float) -> tuple[torch.Tensor, bool]:
    """One optimizer step that fills only `params`' gradients, whatever else the loss depends on.

    The step is skipped, leaving parameters and optimizer state untouched, when the loss or the gradient
    norm is not finite. Returns the gradient norm (before clipping) and whether the step was taken.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))  # one device sync per step
    if finite:
        opt.step()
    return grad_norm, finite


class Agent:
    """World-model learning, and actor-critic learning in imagination when an actor and critic are given.

    Args:
        world_model: the model to train (already on its device).
        scales: world-model loss weights.
        wm_optim: world-model optimizer settings.
        actor, critic, behavior, actor_optim, critic_optim: all None for a world model alone (random policy).
    """

    def __init__(self, world_model: WorldModel, scales: LossScales, wm_optim: OptimSettings,
                 actor: Actor | None = None, critic: Critic | None = None,
                 behavior: BehaviorSettings | None = None, actor_optim: OptimSettings | None = None,
                 critic_optim: OptimSettings | None = None):
        self.wm, self.scales, self.wm_optim = world_model, scales, wm_optim
        self.actor, self.critic, self.behavior = actor, critic, behavior
        self.actor_optim, self.critic_optim = actor_optim, critic_optim
        self.device = next(world_model.parameters()).device
        self.wm_params = list(world_model.parameters())
        self.wm_opt = torch.optim.Adam(self.wm_params, lr=wm_optim.lr, eps=wm_optim.eps)
        if actor is not None:
            self.normalizer = ReturnNormalizer().to(self.device)
            self.actor_params, self.critic_params = list(actor.parameters()), list(critic.net.parameters())
            self.actor_opt = torch.optim.Adam(self.actor_params, lr=actor_optim.lr, eps=actor_optim.eps)
            self.critic_opt = torch.optim.Adam(self.critic_params, lr=critic_optim.lr, eps=critic_optim.eps)
        self.skipped = 0  # updates with a non-finite loss or gradient, in all
        self.skipped_in_a_row = 0

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One gradient step on a (B, T) batch. Returns detached metric tensors.

        An update whose world-model loss or gradient is not finite changes nothing (the behaviour step is
        skipped with it) and returns an empty dict; so does a behaviour step whose actor or critic loss or
        gradient is not finite, for that step alone. Either counts in `skipped` and `skipped_in_a_row`.
        """
        data = to_torch(batch, self.device)
        loss, metrics, post = self.wm.loss(data, self.scales)
        metrics["loss/wm"] = loss.detach()
        metrics["grad_norm/wm"], finite = _step(self.wm_opt, loss, self.wm_params, self.wm_optim.grad_clip)
        if finite and self.actor is not None:
            behavior, finite = self._update_behavior(post, data)
            metrics.update(behavior)
        self.skipped += not finite
        self.skipped_in_a_row = 0 if finite else self.skipped_in_a_row + 1
        return metrics if finite else {}

    def _update_behavior(self, post: RSSMState, data: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
        s = self.behavior
        B, T = data["is_first"].shape
        start = RSSMState(*(x.detach().flatten(0, 1) for x in post))  # every posterior state: (B * T, ...)
        start_cont = 1.0 - data["is_terminal"].flatten().to(start.deter.dtype)  # (B * T,)
        feat, actions, cont = imagine(self.wm, self.actor, start, start_cont, s.horizon, s.backprop, s.cont_prob)
        actor_loss, critic_loss, returns, metrics = behavior_losses(
            self.wm, self.actor, self.critic, self.normalizer, feat, actions, cont, s)
        if s.replay_value > 0:
            loss, replay_metrics = replay_value_loss(
                self.critic, feat[:, 0].unflatten(0, (B, T)), data["reward"], data["is_first"], data["is_terminal"],
                returns[:, 0].unflatten(0, (B, T)), s.gamma, s.lam)  # features and returns of the start states
            critic_loss = critic_loss + s.replay_value * loss
            metrics.update(replay_metrics)
        metrics["grad_norm/actor"], actor_ok = _step(self.actor_opt, actor_loss, self.actor_params,
                                                     self.actor_optim.grad_clip)
        metrics["grad_norm/critic"], critic_ok = _step(self.critic_opt, critic_loss, self.critic_params,
                                                       self.critic_optim.grad_clip)
        if critic_ok:
            self.critic.update_slow(s.slow_rate)
        return metrics, actor_ok and critic_ok

    def state_dict(self) -> dict:
        """Weights, optimizer states, the return normaliser and the skip counters."""
        state = {"world_model": self.wm.state_dict(), "wm_opt": self.wm_opt.state_dict(),
                 "skipped": self.skipped, "skipped_in_a_row": self.skipped_in_a_row}
        if self.actor is not None:
            state.update(actor=self.actor.state_dict(), critic=self.critic.state_dict(),
                         normalizer=self.normalizer.state_dict(), actor_opt=self.actor_opt.state_dict(),
                         critic_opt=self.critic_opt.state_dict())
        return state

    def modules(self) -> dict[str, torch.nn.Module]:
        """The agent's networks by their `state_dict` names."""
        named = {"world_model": self.wm}
        if self.actor is not None:
            named.update(actor=self.actor, critic=self.critic, normalizer=self.normalizer)
        return named

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved. Shapes must match (see `rssm.checkpoint.check_shapes`)."""
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        self.wm_opt.load_state_dict(state["wm_opt"])
        if self.actor is not None:
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.critic_opt.load_state_dict(state["critic_opt"])
        self.skipped, self.skipped_in_a_row = int(state["skipped"]), int(state["skipped_in_a_row"])

    @torch.no_grad()
    def act(self, transitions: dict[str, np.ndarray], state: RSSMState | None,
            explore: bool) -> tuple[np.ndarray, RSSMState]:
        """Update the model state with the newest transitions of N envs and pick their next actions.

        Args:
            transitions: the observation keys (N, ...), action a_{t-1} (N, A), is_first (N,), from
                `rssm.collector.Collector`.
            state: the model state after the previous transitions, or None at the start.
            explore: sample from the actor (True) or take its mode (False).
        Returns:
            The actions (N, A) as float32 numpy, and the new model state (batch N).
        Raises:
            NonFiniteModel: the model state or the policy is not finite (a diverged model).
        """
        keys = (*self.wm.obs_keys, "action", "is_first")
        data = to_torch({k: np.asarray(transitions[k])[:, None] for k in keys}, self.device)  # (N, 1, ...)
        post, _ = self.wm.rssm.observe(self.wm.encode(data), data["action"], data["is_first"], state)
        state = RSSMState(*(x[:, -1] for x in post))  # (N, ...)
        dist, finite = _finite_dist(self.actor(features(state)))
        action = dist.sample() if explore else dist.mode()  # (N, A)
        # The finite flags come to the host with the actions: one copy, as before.
        out = torch.cat([action.float(), finite[:, None].float()], -1).cpu().numpy()  # (N, A + 1)
        if not out[:, -1].all():
            raise NonFiniteModel("the model's state or policy is not finite (nan or inf): it cannot act")
        return out[:, :-1], state


class NonFiniteModel(Exception):
    """The model cannot act: its state or policy holds nan or inf."""


def _finite_dist(dist: ActionDist) -> tuple[ActionDist, torch.Tensor]:
    """`dist` with the parameters of each row that is not finite replaced by harmless ones (sampling a nan
    categorical raises on the CPU and asserts on a GPU), and the rows' finite flags (N,), without a host sync."""
    params = dist.logits if dist.logits is not None else [dist.mean, dist.std]
    finite = torch.stack([torch.isfinite(p).all(-1) for p in params]).all(0)  # (N,)

    def keep(x: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.where(finite[:, None], x, torch.full_like(x, fill))

    if dist.logits is not None:
        return replace(dist, logits=[keep(x, 0.0) for x in dist.logits]), finite
    return replace(dist, mean=keep(dist.mean, 0.0), std=keep(dist.std, 1.0)), finite
