"""Gymnasium environments: creation with clear errors, pixel observations, Atari frames, action conversion,
and the collection loop.

Observations become dicts of keys: a Box observation is the key `obs`, a Dict observation keeps its keys. A key
holds a vector (D,) float32 or an image (H, W, C) uint8; replay transitions hold the keys beside `action`,
`reward`, `is_first` and `is_terminal`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing
from PIL import Image

from rssm.config import UserError


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
        raise UserError("Atari ids need the ale-py package (pip install ale-py)") from None
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


def _is_mujoco(env_id: str) -> bool:
    try:
        entry_point = gym.spec(env_id).entry_point
    except gym.error.Error:
        return False  # gym.make reports an unknown id
    return isinstance(entry_point, str) and entry_point.startswith("gymnasium.envs.mujoco")


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
    except (UserError, gym.error.Error) as e:  # gym's: a missing dependency of AtariPreprocessing (opencv)
        env.close()
        raise UserError(f"environment '{env_id}': {e}") from None
    return env, spec


def _gym_make(env_id: str, kwargs: dict) -> gym.Env:
    try:
        return gym.make(env_id, **kwargs)
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
            raise UserError(f"unsupported observation space {obs_space}{where}: {reason}")
    if not spaces:
        raise UserError(f"unsupported observation space {obs_space}: an empty Dict")
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
            raise UserError(f"unsupported action space {action_space}: a Box needs finite bounds")
        return EnvSpec(shapes, (action_space.shape[0],), False, low, high)
    raise UserError(f"unsupported action space {action_space}: rssm needs Discrete, 1-D MultiDiscrete or 1-D Box")


def to_env_action(action: np.ndarray, spec: EnvSpec):
    """Agent action (..., A) (one-hot segments, or values in [-1, 1]) -> the env's action: an index (...),
    indices (..., segments), or values in the env's bounds (..., A)."""
    if spec.discrete:
        parts = np.split(action, np.cumsum(spec.action_dims)[:-1], axis=-1)
        indices = np.stack([part.argmax(-1) for part in parts], -1)  # (..., segments)
        return indices[..., 0] if len(parts) == 1 else indices
    return spec.low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (spec.high - spec.low)


def random_action(spec: EnvSpec, rng: np.random.Generator, num: int = 1) -> np.ndarray:
    """Uniform random agent actions for `num` envs: one-hot segments or values in [-1, 1], float32 (num, A)."""
    if spec.discrete:
        return np.concatenate([np.eye(n, dtype=np.float32)[rng.integers(n, size=num)] for n in spec.action_dims], -1)
    return rng.uniform(-1.0, 1.0, (num, spec.action_dim)).astype(np.float32)


class EpisodeControl(gym.Wrapper):
    """The wrapper `make_envs` puts around env `index` of a vector env, so that the collector starts every
    episode with a seed of its own and can rebuild an episode under way, in this process or in a worker.

    `reset(seed=s)` starts an episode and holds it: the next `step` ignores its action and returns the reset
    observation again with reward 0 (gymnasium's next-step autoreset, with a known seed). With
    `options={"replay": actions}`, `actions[index]` (one entry per env, as the vector env hands every env the
    same options) is the env actions to take after the reset; the episode then goes on from where they lead,
    and the info's `rssm_replayed` counts the actions taken (fewer if the episode ended on the way). An entry
    None is a plain reset, which holds.
    """

    def __init__(self, env: gym.Env, index: int):
        super().__init__(env)
        self.index, self._held = index, None

    def reset(self, *, seed=None, options=None):
        options = dict(options or {})
        replay = options.pop("replay", None)
        actions = None if replay is None else replay[self.index]
        obs, info = self.env.reset(seed=seed, options=options or None)
        self._held = obs if actions is None else None
        if actions is None:
            return obs, info
        taken = 0
        for action in actions:
            obs, _, terminated, truncated, info = self.env.step(action)
            taken += 1
            if terminated or truncated:
                break
        return obs, {**info, "rssm_replayed": taken}

    def step(self, action):
        if self._held is not None:
            obs, self._held = self._held, None
            return obs, 0.0, False, False, {}
        return self.env.step(action)


def _controlled(make: Callable[[], gym.Env], index: int) -> gym.Env:
    return EpisodeControl(make(), index)


def _controlled_in_worker(make: Callable[[], gym.Env], index: int) -> gym.Env:
    """`_controlled` in an async worker, which ignores SIGINT: Ctrl-C in a terminal reaches the whole process
    group, and the training process, not the worker, decides what to do (save, then stop the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return _controlled(make, index)


def make_envs(make: Callable[[], gym.Env], num: int, kind: str = "sync") -> gym.vector.VectorEnv:
    """`num` envs from `make`, each in an `EpisodeControl`, stepped together: `sync` in this process, `async`
    one subprocess each. The vector env never resets an env itself: `Collector` resets each episode's env."""
    fns = [partial(_controlled_in_worker if kind == "async" else _controlled, make, i) for i in range(num)]
    mode = gym.vector.AutoresetMode.DISABLED
    if kind == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


class EnvFailing(UserError):
    """The envs kept failing: the run cannot go on (exit status 1), though its state is consistent."""


class Collector:
    """Steps N environments together (a vector env from `make_envs`) and turns each step into N replay
    transitions.

    A transition holds obs_t, the action a_{t-1} that led to it (zeros at an episode's start), the reward
    received on arriving at obs_t, is_first and is_terminal; every field has a leading axis of the N envs.
    After an env's episode ends, its next step is a reset that ignores its action.

    Every episode of env i starts from a reset with its own seed, drawn from numpy's SeedSequence of (seed, i,
    stream, episodes env i started); `stream` is 0 unless a resume had to start new episodes. The collector keeps
    each env's seed and the env actions since, so `state_dict` / `load_state_dict` resume episodes under way
    exactly (`_rebuild`). With `remake`, a vector env that raises in `reset` or `step`, or returns a non-finite
    observation or reward, is closed and replaced by `remake()`: the episodes under way end there without being
    reported (no return, no terminal flag), and the next transitions start new ones with `is_first`. `failures`
    counts these, `last_error` describes the latest. `max_failures` failures within `failure_window` env steps
    (in a row, too) raise EnvFailing: an env that fails every few steps would otherwise train on fragments for ever.
    """

    def __init__(self, envs: gym.vector.VectorEnv, spec: EnvSpec, seed: int,
                 remake: Callable[[], gym.vector.VectorEnv] | None = None, max_failures: int = 5,
                 failure_window: int = 1000):
        self.envs, self.spec, self.seed, self.num = envs, spec, seed, envs.num_envs
        self.remake, self.max_failures, self.failure_window = remake, max_failures, failure_window
        self.done = np.ones(self.num, bool)  # per env: the next step starts a new episode
        self.env_steps = 0  # env steps of all envs together (resets are not steps)
        self.episodes = 0
        self.failures, self.last_error, self._phase = 0, "", "reset"
        self._failed_at: deque[int] = deque(maxlen=max_failures)  # env steps of the latest failures
        self._return, self._length = np.zeros(self.num), np.zeros(self.num, np.int64)
        self._started = np.zeros(self.num, np.int64)  # per env: episodes started, the next seed's index
        self._stream = np.zeros(self.num, np.int64)
        # Per env, the episode under way: its reset seed, the env actions taken since, the latest observation.
        self._seeds = [0] * self.num
        self._actions: list[list[np.ndarray]] = [[] for _ in range(self.num)]
        self._last_obs: list[dict[str, np.ndarray] | None] = [None] * self.num
        self._rebuild_due = False  # loaded episodes under way are rebuilt on the next step

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
        """Step every env with its action (N, A). Returns the N new transitions and the return and length of
        each episode that just ended."""
        try:
            out = self._step(actions)
        except Exception as e:  # noqa: BLE001 - whatever the env's own code raises
            if self.remake is None:
                raise
            return self._restart(e, actions)
        return out

    def _step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
        first = self.done.copy()  # (N,): these envs start an episode in this step
        if self._rebuild_due:
            first |= self._rebuild()
        elif first.any():
            self._start_episodes(first)
        env_actions = to_env_action(actions, self.spec)
        self._phase = "step"
        obs, reward, terminated, truncated, _ = self.envs.step(env_actions)
        stepped = ~first
        actions = np.where(first[:, None], 0.0, actions)
        # Checked before any counter moves: a step with a non-finite value is a failure, not a step.
        out = _finite(transition(self.spec, obs, actions, np.where(first, 0.0, reward), first, stepped & terminated))
        self.env_steps += int(stepped.sum())
        self._return = np.where(first, 0.0, self._return + reward)
        self._length = np.where(first, 0, self._length + 1)
        self.done = stepped & (terminated | truncated)
        episodes = [{"return": float(self._return[i]), "length": float(self._length[i])}
                    for i in np.flatnonzero(self.done)]
        self.episodes += len(episodes)
        for i in np.flatnonzero(stepped):
            self._actions[i].append(np.array(env_actions[i]))
        self._last_obs = [{k: out[k][i] for k in self.spec.obs_shapes} for i in range(self.num)]
        return out, episodes

    def _next_seed(self, i: int) -> int:
        key = [self.seed, i, int(self._stream[i]), int(self._started[i])]
        self._started[i] += 1
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def _start_episodes(self, mask: np.ndarray) -> None:
        """Reset the envs in `mask` (N,) with their next seeds; each holds its first observation for the step."""
        seeds = [self._next_seed(i) if mask[i] else None for i in range(self.num)]
        self._phase = "reset"
        self.envs.reset(seed=seeds, options={"reset_mask": mask})
        for i in np.flatnonzero(mask):
            self._seeds[i], self._actions[i] = seeds[i], []

    def _rebuild(self) -> np.ndarray:
        """Reset every env once after `load_state_dict`: an env whose episode was under way is reset with that
        episode's seed and replays its actions, which must lead to its recorded observation; the others start
        new episodes. An env whose episode does not come back (a non-deterministic env) starts a new episode
        in a new seed stream, with one warning line. Returns the envs (N,) that start an episode."""
        fresh = self.done.copy()
        seeds = [self._next_seed(i) if fresh[i] else self._seeds[i] for i in range(self.num)]
        replay = [None if fresh[i] else self._actions[i] for i in range(self.num)]
        self._phase = "reset"
        obs, info = self.envs.reset(seed=seeds, options={"reset_mask": np.ones(self.num, bool), "replay": replay})
        self._rebuild_due = False
        for i in np.flatnonzero(fresh):
            self._seeds[i], self._actions[i] = seeds[i], []
        got = transition(self.spec, obs, np.zeros((self.num, self.spec.action_dim)), 0.0, False, False)
        replayed = info.get("rssm_replayed", np.zeros(self.num, int))
        lost = np.array([not fresh[i] and not self._came_back(i, got, replayed[i]) for i in range(self.num)])
        if lost.any():
            envs = ", ".join(map(str, np.flatnonzero(lost)))
            print(f"rssm: warning: the episode under way in env {envs} did not come back from its seed and actions "
                  "(a non-deterministic env?); starting a new episode", file=sys.stderr)
            self._stream[lost], self._started[lost] = self.env_steps + 1, 0
            self._start_episodes(lost)
        return fresh | lost

    def _came_back(self, i: int, got: dict[str, np.ndarray], replayed: int) -> bool:
        """Whether env i took all its recorded actions and arrived at its recorded observation, bit for bit."""
        same = all(np.array_equal(got[k][i], v) for k, v in self._last_obs[i].items())
        return same and replayed == len(self._actions[i])

    def _restart(self, error: Exception, actions: np.ndarray):
        self.failures += 1
        self._failed_at.append(self.env_steps)
        self.last_error = f"environment raised in {self._phase} after env step {self.env_steps}: {error!r}"
        if len(self._failed_at) == self.max_failures and self.env_steps - self._failed_at[0] < self.failure_window:
            raise EnvFailing(f"{self.last_error}; {self.max_failures} failures within "
                             f"{self.env_steps - self._failed_at[0] + 1} env steps, giving up") from None
        try:
            self.envs.close()
        except Exception:  # noqa: BLE001 - a broken env may fail to close too; it is dropped anyway
            pass
        try:
            self.envs = self.remake()
        except Exception as e:  # noqa: BLE001 - UserError included: the run cannot go on without envs
            raise EnvFailing(f"{self.last_error}; making the env again failed too: {e}") from None
        # Every env starts a new episode; the seed counters go on, so these seeds are new and reproducible.
        self.done[:], self._rebuild_due = True, False
        return self.step(actions)

    def state_dict(self) -> dict:
        """Counters, the seed counters, and per env the episode under way (None where the next step starts
        one): its seed, env actions (T, ...) and latest observation, with its running return and length."""
        episodes = [None if self.done[i] else {"seed": self._seeds[i], "actions": np.array(self._actions[i]),
                                                "obs": {k: np.array(v) for k, v in self._last_obs[i].items()}}
                    for i in range(self.num)]
        return {"env_steps": self.env_steps, "episodes": self.episodes, "failures": self.failures,
                "done": self.done.tolist(), "return": self._return.tolist(), "length": self._length.tolist(),
                "started": self._started.tolist(), "stream": self._stream.tolist(), "under_way": episodes}

    def load_state_dict(self, state: dict) -> None:
        """Take the counters and the episodes under way, which the next step rebuilds. A state without them
        (an older checkpoint, or another number of envs): every env starts a new episode, seeded from the seed
        and the env step."""
        self.env_steps, self.episodes, self.failures = state["env_steps"], state["episodes"], state["failures"]
        self.done[:] = True
        if len(state.get("under_way", ())) != self.num:
            self._stream[:] = self.env_steps + 1
            return
        self.done = np.array(state["done"], bool)
        self._return, self._length = np.array(state["return"], float), np.array(state["length"], np.int64)
        self._started, self._stream = np.array(state["started"], np.int64), np.array(state["stream"], np.int64)
        for i, episode in enumerate(state["under_way"]):
            if episode is not None:
                self._seeds[i], self._actions[i] = int(episode["seed"]), list(episode["actions"])
                self._last_obs[i] = {k: np.asarray(v) for k, v in episode["obs"].items()}
        self._rebuild_due = True


def _finite(transitions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`transitions`, after checking that their float fields are finite (an env failure otherwise: a nan would
    reach the model)."""
    for key, value in transitions.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"the env returned a non-finite {'reward' if key == 'reward' else f'observation {key!r}'}")
    return transitions


def transition(spec: EnvSpec, obs, action, reward, is_first, is_terminal) -> dict[str, np.ndarray]:
    """Replay transitions: each observation key (vectors float32, images uint8) and the step's fields, all with
    the same leading axes (none for one transition, (N,) for a vector env's step)."""
    obs = obs if isinstance(obs, dict) else {"obs": obs}  # a Box observation is the key `obs`
    out = {k: np.asarray(obs[k], np.uint8 if len(s) == 3 else np.float32) for k, s in spec.obs_shapes.items()}
    out.update(action=np.asarray(action, np.float32), reward=np.float32(reward), is_first=np.bool_(is_first),
               is_terminal=np.bool_(is_terminal))
    return out


def blank_transition(spec: EnvSpec) -> dict[str, np.ndarray]:
    """A transition of zeros: the layout and size of every transition from `spec`'s env."""
    obs = {k: np.zeros(s) for k, s in spec.obs_shapes.items()}
    return transition(spec, obs, np.zeros(spec.action_dim), 0.0, False, False)
