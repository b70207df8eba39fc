"""The agent: owns the optimizers, turns a replay batch into one update, and picks actions."""

from __future__ import annotations

import contextlib
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
from rssm.distributed import SINGLE, Ranks
from rssm.optim import Adam, LaProp, LossScale
from rssm.rssm import RSSMState, features
from rssm.world_model import LossScales, WorldModel


@dataclass(frozen=True)
class OptimSettings:
    """One module's optimizer. `adam`: Adam (DreamerV3 2023). `laprop`: LaProp with adaptive per-tensor gradient
    clipping and a linear learning-rate warm-up (`rssm.optim.LaProp`, now)."""

    lr: float
    eps: float
    grad_clip: float  # global gradient-norm clip of the module; 0: none
    name: str = "adam"
    agc: float = 0.0  # laprop: per-tensor clip, ||update|| <= agc * max(1e-3, ||param||); 0: none
    warmup: int = 0  # laprop: updates over which the learning rate rises from 0
    betas: tuple[float, float] = (0.9, 0.999)


def make_optimizer(params: list[torch.nn.Parameter], o: OptimSettings) -> LaProp | Adam:
    kind = LaProp if o.name == "laprop" else Adam
    return kind(params, lr=o.lr, betas=o.betas, eps=o.eps, agc=o.agc, warmup=o.warmup)


def to_torch(batch: dict[str, np.ndarray | torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The arrays as tensors on `device` (tensors already there, as `Replay.sample_tensors` gives them, as they
    are). To a GPU through pinned (page-locked) host memory, from torch's caching allocator: the copies then run
    asynchronously, and the host goes on queueing the update meanwhile."""
    if device.type != "cuda":
        return {k: torch.as_tensor(v) for k, v in batch.items()}
    return {k: v if torch.is_tensor(v) and v.device == device else
            torch.as_tensor(v).pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


Part = tuple[str, LaProp | Adam, list[torch.nn.Parameter], float]  # name, optimizer, its params, clip


def _step(parts: list[Part], losses: list[tuple[torch.Tensor, list[torch.nn.Parameter]]],
          finite: torch.Tensor | None = None, ranks: Ranks = SINGLE,
          scale: LossScale | None = None) -> tuple[dict, torch.Tensor]:
    """One step of the optimizers of `parts`, each loss's gradient filled into its own parameters only, whatever
    else the loss depends on (an actor's return computed through the world model does not train the model).

    The step is skipped, leaving parameters and optimizer states untouched, when a loss or a gradient norm is not
    finite, or where `finite` (0-dim bool) is False; decided on the device, with no host sync. Returns the gradient
    norms before clipping (`grad_norm/<part>`) and whether the step was taken (0-dim bool tensor). With several
    `ranks`, the gradients are averaged over them first, and a loss that is not finite on any rank skips the step
    on every rank: all ranks take the same step. With a loss `scale` (float16), the losses' gradients are formed
    scaled and divided back before anything reads them, and the scale learns from whether its own losses' gradients
    were finite (a step skipped for another reason, `finite`, says nothing of their range).
    """
    for _, opt, _, _ in parts:
        opt.zero_grad(set_to_none=True)
    for loss, params in losses:
        scaled = loss if scale is None else loss * scale.value
        scaled.backward(inputs=params)
    if scale is not None:
        scale.unscale_([p.grad for _, _, params, _ in parts for p in params if p.grad is not None])
    bad = torch.stack([(~torch.isfinite(loss.detach())).float() for loss, _ in losses])  # (losses,)
    ranks.average([p.grad for _, _, params, _ in parts for p in params if p.grad is not None] + [bad])
    norms = {}
    for name, _, params, clip in parts:
        grads = [p.grad for p in params if p.grad is not None]
        norms[f"grad_norm/{name}"] = (torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0
                                      else torch.nn.utils.get_total_norm(grads))
    own = torch.isfinite(torch.stack(list(norms.values()))).all() & (bad == 0).all()  # () bool, on the device
    ok = own if finite is None else own & finite
    for _, opt, _, _ in parts:
        opt.step(finite=ok)
    if scale is not None:
        scale.update(own)  # its own gradients' verdict: an earlier step's skip says nothing of this step's range
    return norms, ok


class Agent:
    """World-model learning, and actor-critic learning in imagination when an actor and critic are given.

    Args:
        world_model: the model to train (already on its device).
        scales: world-model loss weights.
        wm_optim: world-model optimizer settings.
        actor, critic, behavior, actor_optim, critic_optim: all None for a world model alone (random policy).
        joint: every module's loss from one forward pass, then one step of all optimizers (DreamerV3 now); else
            the world model steps first and imagination starts from the stepped model (2023).
        precision: None: float32 throughout. torch.bfloat16 or torch.float16: the forward passes of learning and
            acting run under autocast in it, while weights, optimizer states, gradients, the recurrent state, every
            head's output and every distribution and loss stay float32 (`MLP` and `gru_gates` return float32).
            float16 adds a dynamic loss scale on the device (`rssm.optim.LossScale`): its range is too narrow
            for small gradients otherwise.
        compile: None: eager. A torch.compile backend ("inductor"): the RSSM's posterior step, with its backward
            pass, on a GPU also its prior step in imagination (`RSSM.compile_steps`), the image encoder and decoder
            (`WorldModel.compile_images`) and acting are compiled (the first calls compile). The rest of an update
            is large batched products, which compiling did not speed up on a CPU (docs/benchmarks/speed.md).
        compile_mode: torch.compile's mode for the RSSM's steps: "default", or "reduce-overhead" for CUDA graphs
            of them on a CUDA device (`RSSM.compile_steps`). Acting compiles in the default mode: its recurrent state
            lives from one env step to the next, across updates, where a CUDA graph's outputs would be overwritten.
    """

    def __init__(self, world_model: WorldModel, scales: LossScales, wm_optim: OptimSettings,
                 actor: Actor | None = None, critic: Critic | None = None,
                 behavior: BehaviorSettings | None = None, actor_optim: OptimSettings | None = None,
                 critic_optim: OptimSettings | None = None, joint: bool = False,
                 precision: torch.dtype | None = None, compile: str | None = None, compile_mode: str = "default",
                 ranks: Ranks = SINGLE):
        self.wm, self.scales, self.wm_optim = world_model, scales, wm_optim
        self.actor, self.critic, self.behavior = actor, critic, behavior
        self.actor_optim, self.critic_optim, self.joint = actor_optim, critic_optim, joint
        self.precision, self.ranks = precision, ranks
        self.compiled = compile is not None
        # On a GPU also the prior step, whose operator calls are kernel launches there (on a CPU it did not pay).
        self.device = next(world_model.parameters()).device
        world_model.rssm.compile_steps(compile, compile_mode, prior=self.device.type == "cuda")
        if compile is not None:
            world_model.compile_images(compile)
        self._policy = (self._policy_step if compile is None
                        else torch.compile(self._policy_step, backend=compile, dynamic=False))
        assert not (behavior is not None and behavior.replay_value_grad and not joint), "replay_value_grad needs joint"
        self.wm_params = list(world_model.parameters())
        self.wm_opt = make_optimizer(self.wm_params, wm_optim)
        if actor is not None:
            self.normalizer = ReturnNormalizer(gather=ranks.concat).to(self.device)
            self.actor_params, self.critic_params = list(actor.parameters()), list(critic.net.parameters())
            self.actor_opt = make_optimizer(self.actor_params, actor_optim)
            self.critic_opt = make_optimizer(self.critic_params, critic_optim)
        # Updates with a non-finite loss or gradient, in all and in a row: () int64 tensors on the device, read
        # by the caller when it chooses (each read is a host sync).
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self.skipped_in_a_row = torch.zeros((), dtype=torch.int64, device=self.device)
        # An update skipped for a float16 overflow counts among them: the scale halves, so few come in a row.
        self.loss_scale = LossScale(self.device) if precision == torch.float16 else None
        self.posterior: RSSMState | None = None  # the latest update's posterior states (B, T, ...), detached

    def update(self, batch: dict[str, np.ndarray], start: RSSMState | None = None) -> dict[str, torch.Tensor]:
        """One gradient step on a (B, T) batch, its sequences from the model state `start` (batch B; None: the
        initial state, as `is_first` asks at their first step). Returns detached metric tensors, and keeps the
        posterior states in `posterior`. Nothing in it reads a value back to the host: an update is queued on the
        device whole.

        An update whose world-model loss or gradient is not finite changes nothing (the behaviour step is
        skipped with it) and returns its metrics as nan (`rssm.logging.MeanTracker` leaves them out); so does a
        behaviour step whose actor or critic loss or gradient is not finite: with `joint`, the whole step is
        skipped then, else the behaviour step alone. Either counts in `skipped` and `skipped_in_a_row`.
        """
        data = to_torch(batch, self.device)
        if self.wm.rssm.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last update's graph outputs are free
        with self._autocast():
            loss, metrics, post = self.wm.loss(data, self.scales, start)
        self.posterior = RSSMState(*(x.detach() for x in post))
        metrics["loss/wm"] = loss.detach()
        wm_part = ("wm", self.wm_opt, self.wm_params, self.wm_optim.grad_clip)
        if self.actor is not None and self.joint:
            actor_loss, critic_loss, behavior = self._behavior_losses(post, data)
            metrics.update(behavior)
            norms, finite = _step([wm_part, *self._behavior_parts()],
                                  [(actor_loss, self.actor_params),
                                   (loss + critic_loss, self.wm_params + self.critic_params)],
                                  ranks=self.ranks, scale=self.loss_scale)
            self.critic.update_slow(self.behavior.slow_rate, finite)
        else:
            norms, finite = _step([wm_part], [(loss, self.wm_params)], ranks=self.ranks, scale=self.loss_scale)
            if self.actor is not None:
                behavior, finite = self._update_behavior(post, data, finite)
                metrics.update(behavior)
        metrics.update(norms)
        if self.loss_scale is not None:
            metrics["opt/loss_scale"] = self.loss_scale.value.clone()
        self.skipped += ~finite
        self.skipped_in_a_row = (self.skipped_in_a_row + 1) * ~finite
        return {k: v.float().masked_fill(~finite, float("nan")) for k, v in metrics.items()}

    def _update_behavior(self, post: RSSMState, data: dict[str, torch.Tensor],
                         wm_finite: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The actor's and critic's step after the world model's (not `joint`), skipped with it."""
        actor_loss, critic_loss, metrics = self._behavior_losses(post, data)
        norms, finite = _step(self._behavior_parts(), [(actor_loss, self.actor_params),
                                                       (critic_loss, self.critic_params)], wm_finite,
                              ranks=self.ranks, scale=self.loss_scale)
        self.critic.update_slow(self.behavior.slow_rate, finite)
        return {**metrics, **norms}, finite

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' precision (see `precision`); backward passes and optimizer steps run outside it."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def _behavior_parts(self) -> list[Part]:
        return [("actor", self.actor_opt, self.actor_params, self.actor_optim.grad_clip),
                ("critic", self.critic_opt, self.critic_params, self.critic_optim.grad_clip)]

    def _behavior_losses(self, post: RSSMState,
                         data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Actor and critic losses in imagination from every posterior state, and the critic's loss on the replayed
        states (`replay_value`), whose gradient reaches the world model through `post` with `replay_value_grad`."""
        with self._autocast():
            s = self.behavior
            B, T = data["is_first"].shape
            start = RSSMState(*(x.detach().flatten(0, 1) for x in post))  # every posterior state: (B * T, ...)
            start_cont = 1.0 - data["is_terminal"].flatten().to(start.deter.dtype)  # (B * T,)
            feat, actions, cont, policy = imagine(self.wm, self.actor, start, start_cont, s.horizon, s.backprop,
                                                  s.cont_prob)
            actor_loss, critic_loss, returns, metrics = behavior_losses(
                self.wm, self.critic, self.normalizer, feat, actions, cont, policy, s)
            if s.replay_value > 0:
                loss, replay_metrics = replay_value_loss(
                    self.critic, features(post), data["reward"], data["is_first"], data["is_terminal"],
                    returns[:, 0].unflatten(0, (B, T)), s.gamma, s.lam, grad=s.replay_value_grad)
                critic_loss = critic_loss + s.replay_value * loss
                metrics.update(replay_metrics)
            return actor_loss, critic_loss, metrics

    def state_dict(self) -> dict:
        """Weights, optimizer states, the return normaliser, the skip counters and a float16 loss scale."""
        state = {"world_model": self.wm.state_dict(), "wm_opt": self.wm_opt.state_dict(),
                 "skipped": int(self.skipped), "skipped_in_a_row": int(self.skipped_in_a_row)}
        if self.loss_scale is not None:
            state["loss_scale"] = self.loss_scale.state_dict()
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
        self.skipped.fill_(int(state["skipped"]))
        self.skipped_in_a_row.fill_(int(state["skipped_in_a_row"]))
        if self.loss_scale is not None and "loss_scale" in state:  # a run resumed in float16 after another
            self.loss_scale.load_state_dict(state["loss_scale"])  # precision starts from the initial scale

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
        if state is None:  # a state like every later one: compiled acting then has one graph for all steps
            state = RSSMState(*(x.clone(memory_format=torch.contiguous_format)
                                for x in self.wm.rssm.initial(data["is_first"].shape[0])))
        out, state = self._policy(data, state, explore)
        out = out.cpu().numpy()  # (N, A + 1): the finite flags come to the host with the actions, one copy
        if not out[:, -1].all():
            raise NonFiniteModel("the model's state or policy is not finite (nan or inf): it cannot act")
        return out[:, :-1], state

    def _policy_step(self, data: dict[str, torch.Tensor], state: RSSMState | None,
                     explore: bool) -> tuple[torch.Tensor, RSSMState]:
        """`act` on the device: the actions (N, A) and each row's finite flag as one (N, A + 1) tensor, and the
        new state."""
        with self._autocast():
            post, _ = self.wm.rssm.observe(self.wm.encode(data), data["action"], data["is_first"], state)
            state = RSSMState(*(x[:, -1] for x in post))  # (N, ...)
            dist, finite = _finite_dist(self.actor(features(state)))
        action = dist.sample() if explore else dist.mode()  # (N, A)
        return torch.cat([action.float(), finite[:, None].float()], -1), state


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
