"""DeepMind Control Suite tasks (the `dm-control` package, the optional extra `rssm[dmc]`) as gymnasium envs.

A task is named `domain_task` (walker_walk, ball_in_cup_catch; DreamerV3's `cup_catch` is also understood).
Observations follow DreamerV3 (embodied/envs/dmc.py): the task's named vectors as float32 keys (a scalar becomes a
1-vector), or with pixels the camera's image alone as the key `image`. An episode ends where dm_control's time step
is the last: `terminated` where its discount is 0, `truncated` otherwise (the suite's own time limit).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import sys

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit
from PIL import Image

from rssm.config import UserError
from rssm.envs import ActionRepeat, EnvSpec, env_spec, install
from rssm.messages import first_line

INSTALL = install("dmc")
VIDEO_SIZE = (240, 320)  # (H, W) of `render()` frames, dm_control's default
_CAMERAS = {"quadruped": 2}  # DreamerV3's choice for camera -1: the quadruped's camera 2 follows the body


def camera_id(domain: str, camera: int = -1) -> int:
    """The camera that renders a domain's frames: `camera` itself, or for -1 DreamerV3's (2 for quadruped, else 0)."""
    return _CAMERAS.get(domain, 0) if camera == -1 else camera


@contextlib.contextmanager
def _quiet():
    """Hold back log records up to WARNING: dm_control's import logs its renderer and MuJoCo version (INFO, shown
    by hydra's logging) and loading the quadruped warns about its model file, none of which a user can act on."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _pick_renderer() -> None:
    """dm_control picks its renderer once, at import, from MUJOCO_GL: unset, it tries glfw first, which wants a
    display and warns on a headless machine. On Linux rssm asks for EGL, which draws off-screen, where its library
    loads, and for no renderer where it does not: tasks observed through vectors need none, and pixels are refused
    when the env is made. A value the user set wins."""
    if not sys.platform.startswith("linux") or "MUJOCO_GL" in os.environ:
        return
    try:
        ctypes.CDLL("libEGL.so.1")
        os.environ["MUJOCO_GL"] = "egl"
    except OSError:
        os.environ["MUJOCO_GL"] = "disabled"


def _suite():
    """dm_control's suite, imported on first use: rssm works without the package until a task is asked for."""
    if importlib.util.find_spec("dm_control") is None:
        raise UserError(f"DeepMind Control tasks (env.task) need the dm-control package: {INSTALL}")
    _pick_renderer()
    try:
        with _quiet():
            from dm_control import suite
    except Exception as e:  # noqa: BLE001 - a renderer that cannot load, a dm-control that does not fit mujoco
        raise UserError(f"cannot import dm-control with MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}: "
                        f"{first_line(e, typed=True)} ({INSTALL} installs a dm-control and a mujoco that fit "
                        f"together)") from None
    return suite


def task_names(all_tasks) -> dict[str, tuple[str, str]]:
    """`domain_task` -> (domain, task) for dm_control's `suite.ALL_TASKS` pairs, and DreamerV3's `cup_...` names."""
    names = {f"{domain}_{task}": (domain, task) for domain, task in all_tasks}
    names.update({f"cup_{task}": (domain, task) for domain, task in all_tasks if domain == "ball_in_cup"})
    return names


def split_task(name: str, all_tasks) -> tuple[str, str]:
    """(domain, task) of a task name. Raises UserError, listing the valid names, for an unknown one."""
    names = task_names(all_tasks)
    if name not in names:
        raise UserError(f"unknown DeepMind Control task '{name}' (env.task); valid tasks: {', '.join(sorted(names))}")
    return names[name]


class DMCEnv(gym.Env):
    """One dm_control suite task. `reset(seed=s)` seeds the task's random state, which draws the episode's initial
    physics state and any random targets: the same seed starts the same episode.

    Args:
        task: `domain_task`, e.g. walker_walk.
        pixels: observe the camera's `image_size` square frame (key `image`, uint8 (S, S, 3), or (S, S, 1) with
            `grayscale`) instead of the task's vectors; `keep_state` keeps the vectors beside it.
        camera: the camera id; -1 is DreamerV3's choice (`camera_id`).
        render_mode: None or "rgb_array" (`render()` returns a VIDEO_SIZE frame from the same camera).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, pixels: bool = False, image_size: int = 64, keep_state: bool = False,
                 grayscale: bool = False, camera: int = -1, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"DeepMind Control tasks render rgb_array frames only, not '{render_mode}'")
        suite = _suite()
        domain, name = split_task(task, suite.ALL_TASKS)
        try:
            with _quiet():
                self._env = suite.load(domain, name)
        except Exception as e:  # noqa: BLE001 - e.g. a mujoco too new for dm-control (a missing model attribute)
            raise UserError(f"cannot load DeepMind Control task '{task}': {first_line(e, typed=True)} "
                            f"({INSTALL} installs a dm-control and a mujoco that fit together)") from None
        self.render_mode, self.camera = render_mode, camera_id(domain, camera)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self._env.control_timestep())}  # real time
        self.pixels, self.image_size, self.keep_state, self.grayscale = pixels, image_size, keep_state, grayscale
        # Empty arrays are dropped, as DreamerV3 does: there is nothing in them to model.
        self._keys = [k for k, spec in self._env.observation_spec().items() if int(np.prod(spec.shape)) > 0]
        vectors = {k: gym.spaces.Box(-np.inf, np.inf, (int(np.prod(self._env.observation_spec()[k].shape)),),
                                     np.float32) for k in self._keys}
        spaces = {}
        if pixels:
            spaces["image"] = gym.spaces.Box(0, 255, (image_size, image_size, 1 if grayscale else 3), np.uint8)
        if keep_state or not pixels:
            spaces.update(vectors)
        self.observation_space = gym.spaces.Dict(spaces)
        action = self._env.action_spec()
        self.action_space = gym.spaces.Box(action.minimum.astype(np.float32), action.maximum.astype(np.float32),
                                           action.shape, np.float32)
        self._closed = False
        if pixels or render_mode:
            self._check_rendering()

    def _check_rendering(self) -> None:
        try:
            self._env.physics.render(8, 8, camera_id=self.camera)
        except Exception as e:  # noqa: BLE001 - each renderer fails in its own way (RuntimeError, ImportError, ...)
            self.close()
            raise UserError(f"MuJoCo cannot render DeepMind Control frames here (MUJOCO_GL="
                            f"{os.environ.get('MUJOCO_GL', '')}: {first_line(e, typed=True)}); on Linux it "
                            f"draws off-screen with EGL (libEGL.so.1)") from None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)  # the RandomState the task draws its episodes from, seeded in place
        return self._obs(self._env.reset()), {}

    def step(self, action):
        time_step = self._env.step(np.asarray(action, np.float64))
        terminated = bool(time_step.last() and time_step.discount == 0)
        truncated = bool(time_step.last() and not terminated)
        return self._obs(time_step), float(time_step.reward or 0.0), terminated, truncated, {}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._env.physics.render(*VIDEO_SIZE, camera_id=self.camera)  # (H, W, 3) uint8

    def close(self):
        if not self._closed:
            self._closed = True
            self._env.physics.free()  # its rendering contexts too

    def _obs(self, time_step) -> dict[str, np.ndarray]:
        obs = {}
        if self.pixels:
            frame = self._env.physics.render(self.image_size, self.image_size, camera_id=self.camera)  # (S, S, 3)
            if self.grayscale:
                frame = np.array(Image.fromarray(frame).convert("L"))[..., None]  # luma, (S, S, 1)
            obs["image"] = frame
        if self.keep_state or not self.pixels:
            obs.update({k: np.asarray(time_step.observation[k], np.float32).reshape(-1) for k in self._keys})  # (D,)
        return obs


def make_dmc_env(task: str, action_repeat: int = 1, time_limit: int = 0, render_mode: str | None = None,
                 pixels: bool = False, image_size: int = 64, keep_state: bool = False, grayscale: bool = False,
                 camera: int = -1) -> tuple[gym.Env, EnvSpec]:
    """A DeepMind Control task as a gymnasium env (`DMCEnv`) with `action_repeat` and at most `time_limit` agent
    steps per episode (0: the task's own limit, 1,000 control steps for DreamerV3's tasks), and its EnvSpec.

    Raises:
        UserError: dm-control missing or unusable, an unknown task, or options that do not apply.
    """
    if grayscale and not pixels:
        raise UserError("env.grayscale needs env.pixels")
    env = DMCEnv(task, pixels, image_size, keep_state, grayscale, camera, render_mode)
    if time_limit > 0:
        env = TimeLimit(env, time_limit * action_repeat)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    return env, env_spec(env.observation_space, env.action_space)
