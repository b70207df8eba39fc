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

import os
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
from rssm.build import build_agent, build_env, continue_target, env_id, resolve_device
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.config import UserError, saved_run_config, validate
from rssm.envs import EnvSpec, to_env_action
from rssm.imagination import EnvModel, as_array, check_obs, describe
from rssm.messages import first_line
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
        self.shapes = {k: spec.obs_shapes[k] for k in agent.wm.obs_keys}  # the keys the model sees
        self.dict_obs = list(spec.obs_shapes) != ["obs"]

    def predict(self, obs: Any, state: PolicyState | None = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[Any, PolicyState]:
        """The next action for an observation of the env (`Loaded.make_env()`), or actions for a batch of them.

        Args:
            obs: the env's observation as `reset` or `step` returns it (an array, or a dict of arrays for a Dict
                space; keys the model does not see are ignored), or a batch of N >= 1 with a leading axis (as a
                vector env returns them). Vectors of an integer or float dtype, images of an integer dtype in
                [0, 255].
            state: the returned state of the previous call for the same envs; None at the start.
            episode_start: per env (N,) or one bool (or 0 and 1): whether `obs` starts an episode (the model state
                starts afresh there). Default: True where `state` is None, else False.
            deterministic: the policy's mode (True) or a sample from it.
        Returns:
            The env's action (batched like `obs`: an int or array for one, a leading axis of N for a batch; Box
            actions within the bounds), and the state to pass to the next call.
        Raises:
            ValueError: in one line, before the model runs: `obs` not of the env's shapes (a key missing, keys
                batched differently, an empty batch), not real numbers, or nan or inf (as float32); a `state` of
                another batch size; an `episode_start` not bools, or not broadcastable to (N,).
        """
        arrays, lead = check_obs(obs, self.shapes, self.dict_obs, "obs")
        N = lead[0] if lead else 1
        arrays = arrays if lead else {k: v[None] for k, v in arrays.items()}  # (N, ...)
        if state is not None:
            if not isinstance(state, PolicyState):
                raise ValueError(f"state must be the PolicyState that predict returned, or None; got "
                                 f"{describe(state)}")
            if len(state.action) != N:
                raise ValueError(f"state holds {len(state.action)} envs, but obs holds {N}: pass the state that "
                                 f"predict returned for the same envs, or None")
        first = _episode_start(episode_start, state is None, N)
        last = np.zeros((N, self.spec.action_dim), np.float32) if state is None else state.action
        step = {**arrays, "action": last, "is_first": first}
        actions, model = self.agent.act(step, None if state is None else state.model, explore=not deterministic)
        env_actions = to_env_action(actions, self.spec)
        if not self.spec.discrete:  # float32 rounding may step past a bound, which the env's space refuses
            env_actions = np.clip(env_actions, self.spec.low, self.spec.high)
        return (env_actions if lead else env_actions[0]), PolicyState(model, actions)


def _episode_start(value: Any, default: bool, N: int) -> np.ndarray:
    """`predict`'s episode_start as (N,) bools, checked."""
    if value is None:
        return np.full(N, default)
    start = as_array(value, "episode_start")
    if start.dtype.kind not in "biuf" or not np.isin(start, (0, 1)).all():
        raise ValueError(f"episode_start must be bools (or 0 and 1); got {describe(value)}")
    try:
        return np.broadcast_to(start.astype(bool), (N,)).copy()
    except ValueError:
        raise ValueError(f"episode_start must be one bool or N = {N} of them (one per observation); got shape "
                         f"{start.shape}") from None


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

    def __repr__(self) -> str:  # the config and weights are long: what the run is, and where it came from
        return f"Loaded(env={env_id(self.config)!r}, agent={self.config.agent.kind!r}, path={str(self.path)!r})"

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """A new copy of the env the run trained on, with its wrappers (action repeat, time limit, pixels)."""
        return build_env(self.config, render_mode)[0]


def load(path: str | Path, device: str = "cpu") -> Loaded:
    """A run's config and weights, from its directory or a checkpoint file. A run directory's `checkpoint.pt` is
    read where there is one (the newest weights of a finished or a stopped run); else its `model.pt` with its
    `config.yaml` (a run with replay.save=false that was stopped, or a directory copied without the checkpoint).

    Args:
        path: a run directory or a checkpoint file.
        device: where the model runs: "cpu", "cuda", "cuda:N", another torch device, or "auto" (CUDA where there
            is a GPU).
    Raises:
        ValueError: `path` is not a str or path, or `device` names no torch device.
        UserError: the path holds no run, or files that cannot be read as one (an empty config, a config that is
            not a mapping of rssm's config keys, weights that do not fit it).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a run directory or a checkpoint file (a str or a Path); got "
                         f"{describe(path)}")
    device = _check_device(device)
    path = Path(path).expanduser()
    if path.is_dir() and (path / CHECKPOINT).is_file():
        path = path / CHECKPOINT
    if path.is_file():
        state = load_checkpoint(path, mmap=True)
        if not {"config", "agent"} <= state.keys():
            raise UserError(f"cannot load {path}: it is not a run's checkpoint (no config and weights)")
        cfg, weights = _run_config(state["config"], f"cannot load {path}: its config"), state["agent"]
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
    if not isinstance(weights, dict) or not set(needed) <= weights.keys():
        raise UserError(f"cannot load {path}: it does not hold the run's {' and '.join(needed)} weights")
    try:
        for name, module in agent.modules().items():
            if name in weights:  # model.pt holds no return normaliser: acting does not need it
                module.load_state_dict(weights[name])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"cannot load the weights in {path}: {first_line(e)}") from None
    for module in agent.modules().values():
        module.eval()
    policy = Policy(agent, spec) if agent.actor is not None else None
    return Loaded(cfg, spec, EnvModel(agent.wm, spec, agent.actor, continue_target(cfg)), policy, agent, path)


def _check_device(device: Any) -> str:
    """`load`'s device as `resolve_device` takes it, refused in one line where torch knows no such device."""
    device = str(device) if isinstance(device, torch.device) else device
    if isinstance(device, str) and device == "auto":
        return device
    parsed = None
    if isinstance(device, str):
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            pass  # refused below
    if parsed is None:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', another torch device or 'auto'; got "
                         f"{describe(device)}")
    if parsed.type == "cuda" and parsed.index is not None and torch.cuda.is_available() and \
            parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device must be one of this machine's {torch.cuda.device_count()} GPUs, cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}; got {device!r}")
    return str(parsed)


def _run_config(saved: Any, what: str) -> DictConfig:
    """A saved run config over rssm's schema; `what` (the file's config) begins the error's line."""
    if not isinstance(saved, dict):
        raise UserError(f"{what} is a {type(saved).__name__}, not a mapping of rssm's config keys")
    if not saved:
        raise UserError(f"{what} is empty")
    try:
        return saved_run_config(saved)
    except (ValueError, TypeError, OmegaConfBaseException) as e:
        raise UserError(f"{what} does not fit rssm's config: {first_line(e)}") from None


def _config_file(path: Path) -> DictConfig:
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {first_line(e)}") from None
    return _run_config(saved, str(path))


def _model_file(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read {path} as a torch file ({first_line(e)})") from None
    if not isinstance(state, dict) or "world_model" not in state:
        raise UserError(f"cannot load {path}: it does not hold a run's world model weights")
    return state
