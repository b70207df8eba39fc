"""Gymnasium environments: creation with clear errors, pixel observations, Atari frames and action conversion
(the vector envs and the collection loop are in `rssm.collector`).

Observations become dicts of keys: a Box observation is the key `obs`, a Dict observation keeps its keys. A key
holds a vector (D,) float32 or an image (H, W, C) uint8; replay transitions hold the keys beside `action`,
`reward`, `is_first` and `is_terminal`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing
from PIL import Image

from rssm.config import UserError
from rssm.messages import first_line, say


@dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know about an environment's spaces."""

    obs_shapes: dict[str, tuple[int, ...]]  # per observation key: (D,) float32 vector or (H, W, C) uint8 image
    action_dims: tuple[int, ...]  # one-hot segment sizes (discrete, multi-discrete), or (A,) (continuous)
    discrete: bool
    low: np.ndarray | None = None  # bounds of a continuous action space
    high: np.ndarray | None = None

    @property
    def action_dim(self) -> int:
        """Length of the agent's action vector."""
        return sum(self.action_dims)


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times, summing rewards, stopping early at the episode's end."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class Pixels(gym.ObservationWrapper):
    """Observe the env's `render()` frame, resized to `size` x `size` (area average), as the key `image`
    (uint8 (size, size, 3), or (size, size, 1) with `grayscale`); with `keep_state`, the env's own observation
    too, as the key `state`. The env must have been made with render_mode="rgb_array"."""

    def __init__(self, env: gym.Env, size: int, keep_state: bool = False, grayscale: bool = False):
        super().__init__(env)
        self.size, self.keep_state, self.grayscale = size, keep_state, grayscale
        spaces = {"image": gym.spaces.Box(0, 255, (size, size, 1 if grayscale else 3), np.uint8)}
        if keep_state:
            spaces["state"] = env.observation_space
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation):
        frame = Image.fromarray(self.env.render())  # (H, W, 3) uint8
        if self.grayscale:
            frame = frame.convert("L")  # luma, ITU-R 601
        image = np.array(frame.resize((self.size, self.size), Image.Resampling.BOX))  # writable, (size, size[, 3])
        image = image.reshape(self.size, self.size, -1)  # (size, size, C)
        return {"image": image, "state": observation} if self.keep_state else {"image": image}


# Atari, as in Machado et al. (2018) and the Atari100k benchmark: an agent step is 4 frames whose last two are
# max-pooled (some objects are drawn on alternate frames only), episodes end at game over, not at a lost life.
ATARI_FRAME_SKIP = 4


def atari_id(game: str) -> str:
    """The ALE id of an Atari game named in snake case: pong -> ALE/Pong-v5, ms_pacman -> ALE/MsPacman-v5."""
    return "ALE/" + "".join(part[:1].upper() + part[1:] for part in game.split("_")) + "-v5"


def _register_atari() -> None:
    try:
        import ale_py
    except ImportError:
        raise UserError(f"Atari ids need the ale-py package: {install('atari')}") from None
    gym.register_envs(ale_py)  # importing ale_py registers the ALE/ ids
    # Without this each new ALE prints a two-line banner to stderr, where rssm's errors are one line.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)


def _check_options(atari: bool, pixels: bool, grayscale: bool, sticky_actions: float, noop_max: int) -> None:
    if atari and pixels:
        raise UserError("Atari envs are observed as images already: leave env.pixels false")
    if grayscale and not (atari or pixels):
        raise UserError("env.grayscale needs env.pixels or an Atari id")
    if not atari and (sticky_actions > 0 or noop_max > 0):
        raise UserError("env.sticky_actions and env.noop_max apply to Atari ids (ALE/...) only")


def install(extra: str) -> str:
    """How to install the optional dependencies of rssm's extra `extra` (pyproject.toml)."""
    return f"pip install 'rssm[{extra}]'"


def _entry_point(env_id: str) -> str:
    try:
        entry_point = gym.spec(env_id).entry_point
    except gym.error.Error:
        return ""  # gym.make reports an unknown id
    return entry_point if isinstance(entry_point, str) else ""


def _is_mujoco(env_id: str) -> bool:
    return _entry_point(env_id).startswith("gymnasium.envs.mujoco")


def _missing_dependency(env_id: str, error: Exception) -> UserError:
    """One line for an env whose package is not installed, naming rssm's extra that installs it."""
    family = "atari" if env_id.startswith("ALE/") else next(
        (name for name in ("box2d", "mujoco") if _entry_point(env_id).startswith(f"gymnasium.envs.{name}")), None)
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = f": {install(family)}" if family else ""
    return UserError(f"environment '{env_id}' needs a package that is not installed ({detail}){hint}")


def make_env(env_id: str, action_repeat: int = 1, time_limit: int = 0, render_mode: str | None = None,
             pixels: bool = False, image_size: int = 64, keep_state: bool = False, grayscale: bool = False,
             sticky_actions: float = 0.0, noop_max: int = 0) -> tuple[gym.Env, EnvSpec]:
    """Create a gymnasium env and check that rssm supports its spaces. With `pixels`, the env is observed
    through its rendered frames (`Pixels`, `image_size` square, RGB or `grayscale`; `keep_state` keeps its own
    observation). An Atari id (ALE/...) skips and max-pools frames (`ATARI_FRAME_SKIP`) and observes
    `image_size` square RGB or `grayscale` frames as the key `obs`, with `sticky_actions` (probability that the
    previous action repeats at a frame) and up to `noop_max` no-op frames after a reset.

    Raises:
        UserError: unknown id, missing dependency, an env that cannot render pixels, options that do not apply
            to the env, or unsupported observation or action space.
    """
    atari = env_id.startswith("ALE/")
    _check_options(atari, pixels, grayscale, sticky_actions, noop_max)
    frames = action_repeat * (ATARI_FRAME_SKIP if atari else 1)  # the made env's steps per agent step
    kwargs = {"max_episode_steps": time_limit * frames} if time_limit > 0 else {}
    if atari:
        _register_atari()
        kwargs.update(frameskip=1, repeat_action_probability=sticky_actions)  # AtariPreprocessing skips frames
    if pixels or render_mode is not None:
        kwargs["render_mode"] = "rgb_array" if pixels else render_mode
    if kwargs.get("render_mode") == "rgb_array":
        # Frames are drawn off-screen: without this, pygame's display init looks for a desktop session and
        # prints an error line on a headless machine. A value the user set wins.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        if sys.platform.startswith("linux"):
            # MuJoCo tries glfw first, which needs a display; EGL renders off-screen (macOS keeps its default).
            os.environ.setdefault("MUJOCO_GL", "egl")
        if _is_mujoco(env_id):
            # gymnasium 1.4 renders from a free camera that stays where the episode began, so a walking robot
            # leaves the frame; the models' "track" camera follows it (a model without one keeps the free camera).
            kwargs["camera_name"] = "track"
    env = _gym_make(env_id, kwargs)
    try:
        if pixels and "rgb_array" not in env.metadata.get("render_modes", []):
            raise UserError("env.pixels needs an env that renders rgb_array frames")
        if atari:
            env = AtariPreprocessing(env, noop_max=noop_max, frame_skip=ATARI_FRAME_SKIP, screen_size=image_size,
                                     terminal_on_life_loss=False, grayscale_obs=grayscale, grayscale_newaxis=True)
        if action_repeat > 1:
            env = ActionRepeat(env, action_repeat)
        if pixels:
            env = Pixels(env, image_size, keep_state, grayscale)
        spec = env_spec(env.observation_space, env.action_space)
    except gym.error.DependencyNotInstalled as e:  # AtariPreprocessing's opencv
        close_env(env)
        raise _missing_dependency(env_id, e) from None
    except (UserError, gym.error.Error) as e:
        close_env(env)
        raise UserError(f"environment '{env_id}': {e}") from None
    return env, spec


def one_line(space: gym.Space) -> str:
    """A space as one line (the repr of a 2-D MultiDiscrete or Box spans several)."""
    return " ".join(str(space).split())


def close_env(env: gym.Env | gym.vector.VectorEnv) -> None:
    """Close an env whose `close` may raise (a simulator's own bug): what was to be done goes on, after a warning
    line. A vector env is marked closed, so that it is not closed again when it is collected."""
    try:
        env.close()
    except Exception as e:  # noqa: BLE001 - whatever the env's own code raises
        detail = f": {first_line(e)}" if str(e).strip() else ""
        say(f"rssm: warning: the env's close() raised {type(e).__name__}{detail}; ignored")
        if isinstance(env, gym.vector.VectorEnv | gym.vector.VectorWrapper):
            env.unwrapped.closed = True


def _gym_make(env_id: str, kwargs: dict) -> gym.Env:
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise _missing_dependency(env_id, e) from None
    except gym.error.Error as e:
        raise UserError(f"cannot make environment '{env_id}': {e}") from None
    except Exception as e:  # noqa: BLE001 - a `module:Env` id runs the module's code: a missing module, its bugs
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot make environment '{env_id}': {type(e).__name__}: {detail}".rstrip(": ")) from None


RESERVED_KEYS = ("action", "reward", "is_first", "is_terminal")  # the other fields of a transition
_SUPPORTED = "a 1-D float Box, an H x W x C uint8 Box, or a Dict of these"


def obs_shapes(obs_space: gym.Space) -> dict[str, tuple[int, ...]]:
    """Observation keys and their shapes. Raises UserError for a space rssm cannot model."""
    spaces = dict(obs_space.spaces) if isinstance(obs_space, gym.spaces.Dict) else {"obs": obs_space}
    for key, space in spaces.items():
        vector = isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and np.issubdtype(space.dtype, np.floating)
        image = isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8
        if not (vector or image) or key in RESERVED_KEYS:
            where = f" (key '{key}')" if isinstance(obs_space, gym.spaces.Dict) else ""
            reason = f"the key '{key}' is a transition field" if key in RESERVED_KEYS else f"rssm needs {_SUPPORTED}"
            raise UserError(f"unsupported observation space {one_line(obs_space)}{where}: {reason}")
    if not spaces:
        raise UserError(f"unsupported observation space {one_line(obs_space)}: an empty Dict")
    return {key: tuple(int(n) for n in space.shape) for key, space in spaces.items()}


def env_spec(obs_space: gym.Space, action_space: gym.Space) -> EnvSpec:
    shapes = obs_shapes(obs_space)
    if isinstance(action_space, gym.spaces.Discrete):
        return EnvSpec(shapes, (int(action_space.n),), True)
    if isinstance(action_space, gym.spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        return EnvSpec(shapes, tuple(int(n) for n in action_space.nvec), True)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise UserError(f"unsupported action space {one_line(action_space)}: a Box needs finite bounds")
        return EnvSpec(shapes, (action_space.shape[0],), False, low, high)
    raise UserError(f"unsupported action space {one_line(action_space)}: rssm needs Discrete, 1-D MultiDiscrete or "
                    f"1-D Box")


def to_env_action(action: np.ndarray, spec: EnvSpec):
    """Agent action (..., A) (one-hot segments, or values in [-1, 1]) -> the env's action: an index (...),
    indices (..., segments), or values in the env's bounds (..., A)."""
    if spec.discrete:
        parts = np.split(action, np.cumsum(spec.action_dims)[:-1], axis=-1)
        indices = np.stack([part.argmax(-1) for part in parts], -1)  # (..., segments)
        return indices[..., 0] if len(parts) == 1 else indices
    return spec.low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (spec.high - spec.low)


def from_env_action(action, spec: EnvSpec) -> np.ndarray:
    """The env's action -> the agent's (..., A) float32, the inverse of `to_env_action`: an index (...) or indices
    (..., segments) as one-hot segments, values within the env's bounds (..., A) as values in [-1, 1]."""
    action = np.asarray(action)
    if spec.discrete:
        indices = action[..., None] if len(spec.action_dims) == 1 else action  # (..., segments)
        return np.concatenate([np.eye(n, dtype=np.float32)[indices[..., i].astype(np.int64)]
                               for i, n in enumerate(spec.action_dims)], -1)
    return ((action.astype(np.float32) - spec.low) / (spec.high - spec.low) * 2.0 - 1.0).astype(np.float32)


def random_action(spec: EnvSpec, rng: np.random.Generator, num: int = 1) -> np.ndarray:
    """Uniform random agent actions for `num` envs: one-hot segments or values in [-1, 1], float32 (num, A)."""
    if spec.discrete:
        return np.concatenate([np.eye(n, dtype=np.float32)[rng.integers(n, size=num)] for n in spec.action_dims], -1)
    return rng.uniform(-1.0, 1.0, (num, spec.action_dim)).astype(np.float32)
