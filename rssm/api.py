"""A trained run from Python: `rssm.load(path)` and the policy's SB3-style `predict`.

    import gymnasium as gym
    import rssm

    run = rssm.load("outputs/2026-11-29/12-00-00")  # a run directory or its checkpoint.pt, finished or stopped
    env = run.make_env()  # the env the run trained on, with the run's wrappers (action repeat, pixels, ...)
    obs, _ = env.reset(seed=0)
    action, state = run.policy.predict(obs)  # the mode action, as the env takes it
    obs, reward, terminated, truncated, _ = env.step(action)
    action, state = run.policy.predict(obs, state)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rssm.agent import Agent
from rssm.build import build_agent, build_env, continue_target, resolve_device
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.collector import transition
from rssm.config import UserError, saved_run_config, validate
from rssm.envs import EnvSpec, to_env_action
from rssm.imagination import EnvModel
from rssm.rssm import RSSMState


class PolicyState(NamedTuple):
    """What `Policy.predict` carries from one call to the next: the model state after the observations so far
    (batch N) and the agent's last actions (N, A), which the next observation follows."""

    model: RSSMState
    action: np.ndarray


class Policy:
    """The actor of a trained run acting in its env, in the shape of stable-baselines3's `predict`."""

    def __init__(self, agent: Agent, spec: EnvSpec):
        self.agent, self.spec = agent, spec

    def predict(self, obs: Any, state: PolicyState | None = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[Any, PolicyState]:
        """The next action for an observation of the env (`Loaded.make_env()`), or actions for a batch of them.

        Args:
            obs: the env's observation as `reset` or `step` returns it (an array, or a dict of arrays for a Dict
                space), or a batch of N with a leading axis (as a vector env returns them).
            state: the returned state of the previous call for the same envs; None at the start.
            episode_start: per env (N,) or one bool: whether `obs` starts an episode (the model state starts
                afresh there). Default: True where `state` is None, else False.
            deterministic: the policy's mode (True) or a sample from it.
        Returns:
            The env's action (batched like `obs`: an int or array for one, a leading axis of N for a batch), and
            the state to pass to the next call.
        """
        batched = _batched(obs, self.spec)
        obs = obs if batched else _add_axis(obs)
        N = len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
        if episode_start is None:
            episode_start = state is None
        first = np.broadcast_to(np.asarray(episode_start, bool), (N,)).copy()
        last = np.zeros((N, self.spec.action_dim), np.float32) if state is None else state.action
        step = transition(self.spec, obs, last, np.zeros(N), first, np.zeros(N, bool))
        actions, model = self.agent.act(step, None if state is None else state.model, explore=not deterministic)
        env_actions = to_env_action(actions, self.spec)
        return (env_actions if batched else env_actions[0]), PolicyState(model, actions)


def _add_axis(obs: Any) -> Any:
    return {k: np.asarray(v)[None] for k, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]


def _batched(obs: Any, spec: EnvSpec) -> bool:
    """Whether `obs` holds a batch: its arrays have one axis more than the env's observations."""
    key, shape = next(iter(spec.obs_shapes.items()))
    value = np.asarray(obs[key] if isinstance(obs, dict) else obs)
    if value.ndim not in (len(shape), len(shape) + 1):
        raise ValueError(f"observation {key!r} has shape {value.shape}: the env's is {shape}, or (N, *{shape}) for a "
                         f"batch")
    return value.ndim == len(shape) + 1


@dataclass
class Loaded:
    """A trained run: its config, env spec, world model (in the env's terms; its torch module is
    `world_model.module`) and, for `agent=dreamer`, its policy."""

    config: DictConfig
    spec: EnvSpec
    world_model: EnvModel
    policy: Policy | None
    agent: Agent
    path: Path  # the file the weights came from

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """A new copy of the env the run trained on, with its wrappers (action repeat, time limit, pixels)."""
        return build_env(self.config, render_mode)[0]


def load(path: str | Path, device: str = "cpu") -> Loaded:
    """A run's config and weights, from its directory or a checkpoint file. A run directory's `checkpoint.pt` is
    read where there is one (the newest weights of a finished or a stopped run); else its `model.pt` with its
    `config.yaml` (a run with replay.save=false that was stopped, or a directory copied without the checkpoint).

    Raises:
        UserError: the path holds no run, or files that cannot be read as one.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / CHECKPOINT).is_file():
        path = path / CHECKPOINT
    if path.is_file():
        state = load_checkpoint(path, mmap=True)
        if not {"config", "agent"} <= state.keys():
            raise UserError(f"cannot load {path}: it is not a run's checkpoint (no config and weights)")
        cfg, weights = saved_run_config(state["config"]), state["agent"]
    elif (path / "model.pt").is_file() and (path / "config.yaml").is_file():
        cfg, weights, path = _config_file(path / "config.yaml"), _model_file(path / "model.pt"), path / "model.pt"
    else:
        raise UserError(f"no rssm run at {path}: give a run directory (with checkpoint.pt, or model.pt and "
                        f"config.yaml) or a checkpoint file")
    validate(cfg)
    env, spec = build_env(cfg)
    env.close()
    # eager: compiling is for a training run's thousands of updates; acting and imagining from Python, and
    # evaluating, make too few calls for it to pay
    agent = build_agent(OmegaConf.merge(cfg, {"compile": "false"}), spec, resolve_device(device))
    needed = ["world_model"] + (["actor"] if agent.actor is not None else [])
    if not set(needed) <= weights.keys():
        raise UserError(f"cannot load {path}: it does not hold the run's {' and '.join(needed)} weights")
    try:
        for name, module in agent.modules().items():
            if name in weights:  # model.pt holds no return normaliser: acting does not need it
                module.load_state_dict(weights[name])
    except (RuntimeError, TypeError) as e:
        raise UserError(f"cannot load the weights in {path}: {str(e).strip().splitlines()[0]}") from None
    for module in agent.modules().values():
        module.eval()
    policy = Policy(agent, spec) if agent.actor is not None else None
    return Loaded(cfg, spec, EnvModel(agent.wm, spec, agent.actor, continue_target(cfg)), policy, agent, path)


def _config_file(path: Path) -> DictConfig:
    try:
        return saved_run_config(OmegaConf.to_container(OmegaConf.load(path)))
    except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {str(e).strip().splitlines()[0]}") from None


def _model_file(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read {path} as a torch file ({str(e).strip().splitlines()[0]})") from None
    if not isinstance(state, dict) or "world_model" not in state:
        raise UserError(f"cannot load {path}: it does not hold a run's world model weights")
    return state
