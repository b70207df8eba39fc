"""stable-baselines3 inside a trained world model: `DreamVecEnv`, SB3's own `VecEnv` over the batched dream.

SB3 takes a gymnasium `Env` (which it wraps in its DummyVecEnv) or its own `VecEnv`, not gymnasium's vector envs:

    import rssm.sb3
    from stable_baselines3 import PPO

    agent = PPO("MlpPolicy", rssm.sb3.DreamVecEnv(run, 8), seed=0).learn(10_000)

Needs the `sb3` extra; `rssm` itself does not import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rssm.api import Loaded
from rssm.dream_env import DreamEnv, _rows, dreams
from rssm.envs import install
from rssm.imagination import check_actions

try:
    from stable_baselines3.common.vec_env import VecEnv
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "stable_baselines3":
        raise  # stable-baselines3 is there but misses something of its own: that error says more
    raise ImportError(f"rssm.sb3 needs the stable_baselines3 package: {install('sb3')}") from None


class _Slot:
    """What `get_attr`, `set_attr` and `env_method` reach for one env of the batch: the spaces, render mode and
    metadata all share, `render()` of its own dream, and whatever `set_attr` puts on it."""

    def __init__(self, venv: DreamVecEnv, index: int):
        self._venv, self._index = venv, index
        self.observation_space, self.action_space = venv._dreams.observation_space, venv._dreams.action_space
        self.render_mode, self.metadata, self.spec = venv.render_mode, DreamEnv.metadata, None

    def render(self) -> np.ndarray | None:
        return self._venv._image(self._index)


class DreamVecEnv(VecEnv):
    """`num_envs` dream envs stepped in one batched call of the world model, as stable-baselines3's `VecEnv`.

    SB3's conventions: `step` resets an env whose episode ended within the same step (the observation it returns
    there is the new episode's first), puts that episode's last observation in `infos[i]["terminal_observation"]`,
    and `infos[i]["TimeLimit.truncated"]` is True where the episode was cut at `max_episode_steps` rather than
    ended by the continue head. `seed(s)` seeds the next `reset` (SB3's algorithms call it with their `seed`): the same
    seed repeats the dreams. `get_attr`, `set_attr` and `env_method` reach one small object per env holding
    `observation_space`, `action_space`, `render_mode`, `metadata`, `spec` (None) and `render()`; there are no
    gymnasium wrappers (`env_is_wrapped` is False). SB3's `VecMonitor` adds episode returns and lengths to the
    infos (which SB3's logs show as `ep_rew_mean`).

    Args:
        run: a run directory or checkpoint file (as `rssm.load` takes), or a `rssm.Loaded`.
        num_envs: how many dreams step together, an int >= 1.
        start, context, pool, max_episode_steps, termination, render_mode, device: as `rssm.DreamEnv`'s.
    Raises:
        ValueError: in one line, before the run loads, for an argument `rssm.DreamVecEnv` refuses.

    Shapes: `reset()` and `step` give observations (num_envs, ...) in the observation space's dtype (for a Dict,
    a dict of them), rewards float32 (num_envs,), dones bool (num_envs,). `step` takes (num_envs, ...) actions as
    `rssm.DreamVecEnv.step` does (for Discrete: integer indices) and refuses others with a one-line ValueError.
    """

    def __init__(self, run: str | Path | Loaded, num_envs: int, start: str = "env", context: int = 8,
                 pool: int = 1024, max_episode_steps: int | None = None, termination: str = "sample",
                 render_mode: str | None = None, device: str = "cpu"):
        self._dreams = dreams(run, num_envs, start, context, pool, max_episode_steps, termination, render_mode, device)
        # VecEnv's __init__ reads its envs' render_mode (get_attr over num_envs of them): they exist before it runs
        self.num_envs, self.render_mode = num_envs, render_mode
        self._slots = [_Slot(self, i) for i in range(num_envs)]
        super().__init__(num_envs, self._dreams.observation_space, self._dreams.action_space)
        self._rng = np.random.default_rng()
        self._actions: np.ndarray | None = None

    def reset(self) -> Any:
        if self._seeds[0] is not None:  # one generator draws for all the batch: the first env's seed is its seed
            self._rng, _ = gym.utils.seeding.np_random(self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._dreams.reset(np.arange(self.num_envs), self._rng)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._dreams.state is None:
            raise gym.error.ResetNeeded("call reset before step")
        actions = check_actions(self._actions, self._dreams.model.spec, (self.num_envs,), "actions")
        obs, reward, terminated, truncated = self._dreams.step(actions, self._rng)
        dones = terminated | truncated  # truncated is never set where terminated is
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(t)} for t in truncated]
        if dones.any():
            rows = np.flatnonzero(dones)
            last = _rows(obs, rows)  # (n, ...): a copy, as the new episodes' first observations replace these rows
            for j, i in enumerate(rows):
                infos[i]["terminal_observation"] = _rows(last, j)
            self._dreams.restart(obs, rows, self._rng)
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self._dreams.starts.close()

    def get_images(self) -> list[np.ndarray | None]:
        """The decoded image (H, W, 3) uint8 of each env's current state; Nones without render_mode="rgb_array"."""
        return [self._image(i) for i in range(self.num_envs)]

    def _image(self, index: int) -> np.ndarray | None:
        if self.render_mode is None or self._dreams.state is None:
            return None
        return self._dreams.frame(index)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self._slots[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        for i in self._get_indices(indices):
            setattr(self._slots[i], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: Any = None, **method_kwargs) -> list[Any]:
        return [getattr(self._slots[i], method_name)(*method_args, **method_kwargs)
                for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
