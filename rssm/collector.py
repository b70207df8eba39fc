"""Vector envs whose episodes rssm starts itself (each from a seed it records), and the collector that steps them
and turns each step into replay transitions."""

from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import gymnasium as gym
import numpy as np

from rssm.config import UserError
from rssm.envs import EnvSpec, close_env, to_env_action
from rssm.messages import say


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


class EnvTimeout(Exception):
    """A reset or step of the envs took longer than `env.step_timeout`: an env failure."""


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
    An env that raises SystemExit or KeyboardInterrupt has failed too: rssm's own stops come as signals, which
    it handles. With `step_timeout` (seconds; main thread only), a reset or step that takes longer fails with
    EnvTimeout.
    """

    def __init__(self, envs: gym.vector.VectorEnv, spec: EnvSpec, seed: int,
                 remake: Callable[[], gym.vector.VectorEnv] | None = None, max_failures: int = 5,
                 failure_window: int = 1000, step_timeout: float | None = None):
        self.envs, self.spec, self.seed, self.num = envs, spec, seed, envs.num_envs
        self.remake, self.max_failures, self.failure_window = remake, max_failures, failure_window
        self.step_timeout = step_timeout if threading.current_thread() is threading.main_thread() else None
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
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - whatever the env's own code raises
            if self.remake is None:
                raise
            return self._restart(e, actions)
        return out

    def close(self, force: bool = False) -> None:
        """Close the envs; with `force`, async workers are terminated rather than asked (a hung one never
        answers)."""
        if force:
            self.envs.close(terminate=True)
        else:
            close_env(self.envs)

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        """Raise EnvTimeout in the block once `step_timeout` seconds have passed (SIGALRM)."""
        if not self.step_timeout:
            yield
            return

        def expire(signum, frame):
            raise EnvTimeout(f"no answer within env.step_timeout={self.step_timeout:g} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.step_timeout)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
        first = self.done.copy()  # (N,): these envs start an episode in this step
        if self._rebuild_due:
            first |= self._rebuild()
        elif first.any():
            self._start_episodes(first)
        env_actions = to_env_action(actions, self.spec)
        self._phase = "step"
        with self._deadline():
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
        with self._deadline():
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
            say(f"rssm: warning: the episode under way in env {envs} did not come back from its seed and actions "
                "(a non-deterministic env?); starting a new episode")
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
            self.close(force=True)
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
