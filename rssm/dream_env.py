"""Gymnasium envs inside a trained world model: `DreamEnv` (one) and `DreamVecEnv` (N stepped in one batched call).

An episode starts from real observations, either a reset of the run's real env (`start="env"`) or `context`
consecutive steps of one episode from the run's replay (`start="replay"`: its chunk files and the rows after them
in its checkpoint, `rssm.replay_read`), which the posterior sees. From then on each step is the world model's prior
under the given action: the observation is the decoder's prediction in the env's own space (clipped into it), the
reward the reward head's; the episode terminates at a step with the probability the continue head gives that it
ends there (`termination="sample"`; `"mode"`: where that probability is above one half), and it is truncated after
`max_episode_steps` (by default the run's time limit, in agent steps, where its env has one). The observation and
action spaces are the real env's (for a Dict, the keys the world model sees). Latents are drawn from the env's own
generator, so a seeded reset repeats.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rssm.api import Loaded, load
from rssm.build import env_id
from rssm.checkpoint import seeded
from rssm.config import UserError
from rssm.envs import ATARI_FRAME_SKIP, to_env_action
from rssm.imagination import EnvModel, check_actions, describe
from rssm.replay import chunk_files
from rssm.replay_read import checkpoint_tail, replay_dir, replay_sequences
from rssm.rssm import RSSMState


def _rows(obs: Any, rows: np.ndarray) -> Any:
    return {k: v[rows] for k, v in obs.items()} if isinstance(obs, dict) else obs[rows]


def _stack(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    return np.stack(parts)


def _modelled_space(space: gym.Space, keys: tuple[str, ...]) -> gym.Space:
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({k: space[k] for k in sorted(keys)})
    return space


def _clip(obs: Any, space: gym.Space) -> Any:
    """Predicted observations (..., *shape) clipped into `space` (a Box, or a Dict of them), in its dtypes."""
    if isinstance(space, gym.spaces.Dict):
        return {k: _clip(v, space[k]) for k, v in obs.items()}
    return np.clip(obs, space.low, space.high).astype(space.dtype)


def _episode_limit(loaded: Loaded, env: gym.Env) -> int | None:
    """The run's episodes' most agent steps: `env.time_limit`, else the made env's limit over its steps per agent
    step; None where there is none."""
    e = loaded.config.env
    if e.time_limit > 0:
        return int(e.time_limit)
    limit = env.spec.max_episode_steps if env.spec is not None else None
    if not limit:
        return None
    frames = e.action_repeat * (ATARI_FRAME_SKIP if env_id(loaded.config).startswith("ALE/") else 1)
    return math.ceil(limit / frames)


class _EnvStarts:
    """Episode starts from resets of the run's real env, one copy per dream env, made when first needed."""

    def __init__(self, loaded: Loaded, num: int):
        self.loaded, self.envs = loaded, [None] * num

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any]:
        firsts = []
        for i in rows:
            if self.envs[i] is None:
                self.envs[i] = self.loaded.make_env()
            obs, _ = self.envs[i].reset(seed=int(rng.integers(2**31)))
            firsts.append(obs)
        return _stack(firsts), None  # (n, ...): one observation each

    def close(self) -> None:
        for env in self.envs:
            if env is not None:
                env.close()


class _ReplayStarts:
    """Episode starts from the run's replay: `context` consecutive steps within one episode, drawn from a pool of
    up to `pool` such stretches read once."""

    def __init__(self, loaded: Loaded, context: int, pool: int, seed: int):
        run_dir = loaded.path.parent
        replay = replay_dir(run_dir)
        # the rows after the last chunk file are in the checkpoint: all of them in a run shorter than one chunk
        checkpoint = loaded.path if loaded.path.name != "model.pt" else None
        tail = checkpoint_tail(checkpoint, loaded.config.replay.chunk)
        if not chunk_files(replay) and tail is None:
            raise UserError(f"{run_dir} has no replay chunks to start dreams from (replay/chunk_*.npz): use "
                            f"start='env'")
        windows = replay_sequences(replay, context, pool, np.random.default_rng(seed), tail)  # (S, context, ...)
        spec, keys = loaded.spec, loaded.world_model.module.obs_keys
        obs = {k: windows[k] for k in keys}
        self.obs = obs if list(spec.obs_shapes) != ["obs"] else obs["obs"]
        actions = to_env_action(windows["action"][:, 1:], spec)  # (S, context - 1, ...): between the obs
        # float32 rounding may step past a bound, which the model's checked `start` refuses
        self.actions = actions if spec.discrete else np.clip(actions, spec.low, spec.high)

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any]:
        pick = rng.integers(len(self.actions), size=len(rows))
        return _rows(self.obs, pick), self.actions[pick]

    def close(self) -> None:
        pass


class _Dreams:
    """`num` dream episodes of one world model, stepped together."""

    def __init__(self, run: str | Path | Loaded, num: int, start: str, context: int, pool: int,
                 max_episode_steps: int | None, termination: str, device: str):
        _check_dream(num, start, context, pool, max_episode_steps, termination)
        loaded = run if isinstance(run, Loaded) else load(run, device)
        self.termination = termination
        self.loaded, self.model, self.num = loaded, loaded.world_model, num
        real = loaded.make_env()
        self.observation_space = _modelled_space(real.observation_space, self.model.module.obs_keys)
        self.action_space = real.action_space
        self.max_steps = _episode_limit(loaded, real) if max_episode_steps is None else max_episode_steps
        real.close()
        self.starts = _EnvStarts(loaded, num) if start == "env" else _ReplayStarts(loaded, context, pool, 0)
        self.state: RSSMState | None = None
        self.steps = np.zeros(num, np.int64)
        self.rssm = self.model.module.rssm

    def reset(self, rows: np.ndarray, rng: np.random.Generator) -> Any:
        """Start new episodes in `rows` (indices): their first observations (n, ...)."""
        obs, actions = self.starts.draw(rows, rng)
        with seeded(int(rng.integers(2**62)), self.model.device):
            state = self.model.start(obs, actions)  # batch n
        index = torch.as_tensor(rows, device=self.model.device)
        if self.state is None:
            self.state = RSSMState(*(x.new_zeros(self.num, *x.shape[1:]) for x in state))
        self.state = RSSMState(*(s.index_copy(0, index, x) for s, x in zip(self.state, state, strict=True)))
        self.steps[rows] = 0
        last = _rows(obs, (slice(None), -1)) if actions is not None else obs
        return _clip(last, self.observation_space)

    def restart(self, obs: Any, rows: np.ndarray, rng: np.random.Generator) -> None:
        """Start new episodes in `rows` (indices), their first observations written into those rows of `obs`."""
        fresh = self.reset(rows, rng)
        if isinstance(obs, dict):
            for k in obs:
                obs[k][rows] = fresh[k]
        else:
            obs[rows] = fresh

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """One prior step of every episode under env actions (num, ...) that `check_actions` took: observations,
        rewards, terminated, truncated."""
        uniform = torch.as_tensor(rng.random((self.num, self.rssm.groups, 1), np.float32), device=self.model.device)
        self.state = self.model.step(self.state, self.model.actions_to_model(actions).float(), uniform)
        obs, reward, cont = self.model.predict(self.state)
        self.steps += 1
        if self.termination == "sample":  # cont: the probability that the episode goes on
            terminated = rng.random(self.num) >= cont
        else:
            terminated = cont < 0.5
        truncated = ~terminated & (self.steps >= self.max_steps) if self.max_steps else np.zeros(self.num, bool)
        return _clip(obs, self.observation_space), reward.astype(np.float64), terminated, truncated

    def frame(self, row: int) -> np.ndarray:
        """The decoded image (H, W, 3) uint8 of episode `row`'s current state: the first image key."""
        obs = self.model.predict(RSSMState(*(x[row:row + 1] for x in self.state)))[0]
        image = (obs if not isinstance(obs, dict) else obs[self.model.module.image_keys[0]])[0]
        return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]


def _whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_dream(num: Any, start: Any, context: Any, pool: Any, max_episode_steps: Any, termination: Any) -> None:
    """The arguments of `DreamEnv` and `DreamVecEnv` (`num`: num_envs), refused in one line before the run loads."""
    for name, value in (("num_envs", num), ("context", context), ("pool", pool)):
        if not (_whole(value) and value >= 1):
            raise ValueError(f"{name} must be an int >= 1; got {describe(value)}")
    if max_episode_steps is not None and not (_whole(max_episode_steps) and max_episode_steps >= 1):
        raise ValueError(f"max_episode_steps must be None (the run's time limit) or an int >= 1; got "
                         f"{describe(max_episode_steps)}")
    if not (isinstance(start, str) and start in ("env", "replay")):
        raise ValueError(f"start must be 'env' or 'replay'; got {describe(start)}")
    if not (isinstance(termination, str) and termination in ("sample", "mode")):
        raise ValueError(f"termination must be 'sample' or 'mode'; got {describe(termination)}")


def _check_render_mode(mode: Any) -> None:
    if not (mode is None or (isinstance(mode, str) and mode == "rgb_array")):
        raise ValueError(f"render_mode must be None or 'rgb_array'; got {describe(mode)}")


def dreams(run: str | Path | Loaded, num: int, start: str, context: int, pool: int, max_episode_steps: int | None,
           termination: str, render_mode: str | None, device: str) -> _Dreams:
    """The batched dream of `num` envs that `DreamEnv`, `DreamVecEnv` and `rssm.sb3.DreamVecEnv` step, its
    `render_mode` checked against its model."""
    _check_render_mode(render_mode)
    made = _Dreams(run, num, start, context, pool, max_episode_steps, termination, device)
    _check_render(render_mode, made.model)
    return made


def _check_render(mode: str | None, model: EnvModel) -> None:
    if mode and not model.module.image_keys:
        raise UserError("render_mode='rgb_array' needs a world model with image observations; this one sees "
                        f"{', '.join(model.module.obs_keys)}")


class DreamEnv(gym.Env):
    """A gymnasium env whose steps are a trained world model's prior.

    Args:
        run: a run directory or checkpoint file (as `rssm.load` takes), or a `rssm.Loaded`.
        start: "env" (each episode starts from a reset of the run's real env) or "replay" (from `context` steps of
            an episode in the run's replay; `pool` of them are read when the env is made).
        max_episode_steps: truncate episodes after this many steps; None: the run's time limit where its env has
            one, else no limit.
        termination: "sample" (an episode ends at a step with the probability the continue head gives it) or
            "mode" (it ends where that probability is above one half).
        render_mode: None or "rgb_array" (the decoded image, for a world model with image observations).
        device: where the model runs (when `run` is a path).
    Raises:
        ValueError: in one line, before the run loads: `context` or `pool` not an int >= 1, `max_episode_steps`
            neither None nor an int >= 1, an unknown `start`, `termination` or `render_mode`.

    `step` takes what `action_space.contains` takes and refuses the rest with a one-line ValueError before the
    model steps: for Discrete, an int or a numpy integer in range (Python's bool is an int; numpy's bool, floats
    and uint64 are refused); for MultiDiscrete, integer indices in range; for Box, real numbers of its shape,
    finite and within its bounds, of any real dtype (`contains` refuses float64 for a float32 Box; `step` takes
    it). A Box action outside the bounds is refused, not clipped.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, run: str | Path | Loaded, start: str = "env", context: int = 8, pool: int = 1024,
                 max_episode_steps: int | None = None, termination: str = "sample", render_mode: str | None = None,
                 device: str = "cpu"):
        self._dreams = dreams(run, 1, start, context, pool, max_episode_steps, termination, render_mode, device)
        self.observation_space = self._dreams.observation_space
        self.action_space = self._dreams.action_space
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        obs = self._dreams.reset(np.zeros(1, np.int64), self.np_random)
        return _rows(obs, 0), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self._dreams.state is None:
            raise gym.error.ResetNeeded("call reset before step")
        if isinstance(action, bool) and self._dreams.model.spec.discrete:
            action = int(action)  # as Discrete.contains takes it: Python's bool is an int, numpy's is not
        action = check_actions(action, self._dreams.model.spec, (), "action")
        obs, reward, terminated, truncated = self._dreams.step(action[None], self.np_random)
        return _rows(obs, 0), float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._dreams.state is None:
            return None
        return self._dreams.frame(0)

    def close(self) -> None:
        self._dreams.starts.close()


class DreamVecEnv(gym.vector.VectorEnv):
    """`num_envs` dream envs stepped in one batched call of the world model: gymnasium's vector env API, with
    its next-step autoreset (the step after an episode ends starts a new one and ignores that env's action).
    Arguments as `DreamEnv`'s; `num_envs` must be an int >= 1 (else ValueError). `step` takes (num_envs, ...)
    actions, each as `DreamEnv.step` takes one (for Discrete: integer indices, an integer dtype), and refuses
    others, or another number of them, with a one-line ValueError before the model steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30, "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, run: str | Path | Loaded, num_envs: int, start: str = "env", context: int = 8,
                 pool: int = 1024, max_episode_steps: int | None = None, termination: str = "sample",
                 render_mode: str | None = None, device: str = "cpu"):
        self._dreams = dreams(run, num_envs, start, context, pool, max_episode_steps, termination, render_mode, device)
        self.num_envs, self.render_mode = num_envs, render_mode
        self.single_observation_space = self._dreams.observation_space
        self.single_action_space = self._dreams.action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._done = np.zeros(num_envs, bool)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        self._done[:] = False
        return self._dreams.reset(np.arange(self.num_envs), self.np_random), {}

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self._dreams.state is None:
            raise gym.error.ResetNeeded("call reset before step")
        actions = check_actions(actions, self._dreams.model.spec, (self.num_envs,), "actions")
        obs, reward, terminated, truncated = self._dreams.step(actions, self.np_random)
        if self._done.any():  # the envs whose episode ended last step start afresh instead
            rows = np.flatnonzero(self._done)
            self._dreams.restart(obs, rows, self.np_random)
            reward[rows], terminated[rows], truncated[rows] = 0.0, False, False
        self._done = terminated | truncated
        return obs, reward, terminated, truncated, {}

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None or self._dreams.state is None:
            return None
        return tuple(self._dreams.frame(i) for i in range(self.num_envs))

    def close_extras(self, **kwargs) -> None:
        self._dreams.starts.close()
