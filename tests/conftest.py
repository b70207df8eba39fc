import hashlib
import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from rssm.config import UserError, register_configs
from rssm.training import train


@pytest.fixture
def compose_config():
    """compose_config(*overrides) -> the composed DictConfig, as `rssm-train` would build it."""
    register_configs()

    def _compose(*overrides: str):
        with initialize_config_module("rssm.configs", version_base=None):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture
def skip_without_egl():
    """skip_without_egl() skips the test where the system's EGL library cannot be loaded: MuJoCo renders
    pixels off-screen through it (.ci/run installs it with apt-get where it can)."""

    def _skip() -> None:
        import ctypes

        try:
            ctypes.CDLL("libEGL.so.1")
        except OSError as e:
            pytest.skip(f"libEGL.so.1 cannot be loaded ({e}): MuJoCo cannot render off-screen here")

    return _skip


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one thread is fastest and avoids oversubscribing small CI machines."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test compiles from nothing: torch.compile's caches live per process, and a worker that has run other
    compiling tests could otherwise be at dynamo's recompile limit for a function, which then runs eagerly and
    would pass a compiled-equals-eager test without compiling anything."""
    yield
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


def cli_env() -> dict[str, str]:
    """The environment for a `python -m rssm` subprocess that imports the same `rssm` as the tests
    (a source checkout first on PYTHONPATH, or the installed package)."""
    import os
    from pathlib import Path

    import rssm

    root = str(Path(rssm.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture
def run_cli():
    """run_cli(*args, cwd, timeout=300, **popen) -> CompletedProcess of `python -m rssm *args`."""
    import subprocess
    import sys

    def _run(*args: str, cwd, timeout: int = 300):
        return subprocess.run([sys.executable, "-m", "rssm", *args], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, env=cli_env())

    return _run


@pytest.fixture
def cli_environ() -> dict[str, str]:
    """`cli_env()` for tests that start `python -m rssm` themselves (to signal or kill it)."""
    return cli_env()


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Finished debug runs, each with replay chunks of 64 transitions: cartpole (discrete), pendulum (continuous)
    and pixels (CartPole observed as 16 x 16 frames: the key `image`)."""
    from rssm.training import train

    register_configs()
    root = tmp_path_factory.mktemp("runs")
    setups = {"cartpole": ["env=cartpole"], "pendulum": ["env=pendulum"],
              "pixels": ["env=cartpole", "env.pixels=true", "env.image_size=16"]}
    with initialize_config_module("rssm.configs", version_base=None):
        for name, overrides in setups.items():
            cfg = compose("config", overrides=[*overrides[:1], "experiment=debug", "trainer.steps=200",
                                               "replay.chunk=64", "trainer.progress=false", *overrides[1:]])
            train(cfg, root / name)
    return root


# Shared by test_faults, test_refusals and test_disk: a debug run's overrides, envs with faults, a finished run,
# and the checks that a refusal is one line and changes no file.
DEBUG = ("experiment=debug", "trainer.progress=false")
RUN = (*DEBUG, "trainer.steps=200", "trainer.checkpoint_every=100", "trainer.eval_episodes=1", "replay.chunk=32")


# Envs with faults, reached through `faulty_envs:ID` ids. What they do is picked by the variable FAULTY, read
# only here. Training seeds each evaluation's env from the run's seed and the step: the env knows it is
# evaluating from that.
ENV_MODULE = '''
import os
import signal
import time

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv

from rssm.evaluate import evaluation_seed

NAN_LEFT, MADE, DONE = [1], {}, set()  # faults that happen once in a process; per mode: envs made


def once(key) -> bool:
    """True the first time `key` is asked in this process."""
    first = key not in DONE
    DONE.add(key)
    return first


def fill(path: str) -> None:
    """Write zeros to `path` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        pass
    finally:
        os.close(fd)
# The reset seeds of the first episode of an evaluation at env steps 0 to 1,000 of a run of seed 0: its env 0 starts
# episode 0 of seed stream 0 (rssm.collector.Collector).
EVAL_SEEDS = {int(np.random.SeedSequence([evaluation_seed(0, steps), 0, 0, 0]).generate_state(1)[0])
              for steps in range(1001)}


class Faulty(CartPoleEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mode, self.count, self.evaluating = os.environ.get("FAULTY", ""), 0, False
        MADE[self.mode] = MADE.get(self.mode, 0) + 1
        if self.mode == "crash_then_unmakeable" and MADE[self.mode] > 2:  # train makes one to check, then the envs
            raise ConnectionError("the simulator's licence server is down")

    def close(self):
        if self.mode == "close_raises":
            raise RuntimeError("the simulator's licence lapsed")
        super().close()

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.evaluating = seed in EVAL_SEEDS
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.count += 1
        obs, reward, terminated, truncated, info = super().step(action)
        if self.mode == "sigterm_in_eval" and self.evaluating and self.count == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.mode == "raise_in_eval" and self.evaluating and self.count == 5:
            raise RuntimeError("simulator crashed during evaluation")
        if self.mode == "crash_then_unmakeable" and self.count == 50:
            raise RuntimeError("simulator crashed")
        if self.mode == "flaky" and self.count % 3 == 0:
            raise RuntimeError("simulator crashed")
        if self.mode == "hang" and self.count == 30:  # until a signal ends it
            open(os.environ["HANG_MARK"], "w").close()
            time.sleep(3600)
        if self.mode == "hang_once" and self.count == 30 and once(self.mode):
            time.sleep(3600)
        if self.mode in ("system_exit", "keyboard_interrupt") and self.count == 30 and once(self.mode):
            raise SystemExit(3) if self.mode == "system_exit" else KeyboardInterrupt
        if self.mode == "fill_disk" and self.count == 150 and once(os.environ["FILL"]):
            fill(os.environ["FILL"])
        if self.mode == "nan_once" and self.count == 30 and NAN_LEFT[0]:
            NAN_LEFT[0] -= 1
            obs = obs * np.nan
        return obs, reward, terminated, truncated, info


class GridActions(gym.Env):
    """An action space rssm cannot take: a 2-D MultiDiscrete, whose repr spans two lines."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.MultiDiscrete([[2, 3], [4, 5]])


class BigObs(gym.Env):
    """8 KB random observations: a replay chunk of 16 steps is 128 KB, and stays about that compressed."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2048,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2048).astype(np.float32), {}

    def step(self, action):
        return self.np_random.uniform(-1, 1, 2048).astype(np.float32), 1.0, False, False, {}


gym.register("Faulty-v0", entry_point=Faulty, max_episode_steps=500)
gym.register("BigObs-v0", entry_point=BigObs, max_episode_steps=50)
gym.register("GridActions-v0", entry_point=GridActions)
'''


# Runs rssm-train with a second SIGINT and a SIGTERM arriving while the stop's own checkpoint is written.
WRAPPER = '''
import os
import signal

import torch

import rssm.app
import rssm.collector

real_save, real_step, stopping = torch.save, rssm.collector.Collector.step, []


def step(self, actions):
    out = real_step(self, actions)
    if self.env_steps >= 150 and not stopping:
        stopping.append(self.env_steps)
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C
    return out


def save(obj, f):
    if stopping and "progress" in obj:  # the checkpoint the stop asked for
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    real_save(obj, f)


rssm.collector.Collector.step, torch.save = step, save
rssm.app.main()
'''


@pytest.fixture(scope="session")
def env_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("envs")
    (where / "faulty_envs.py").write_text(ENV_MODULE)
    (where / "wrap_train.py").write_text(WRAPPER)
    return where


@pytest.fixture
def faulty(env_dir, monkeypatch):
    """faulty(mode): the Faulty env in this process, with `mode`."""
    monkeypatch.syspath_prepend(str(env_dir))

    def _set(mode: str) -> None:
        monkeypatch.setenv("FAULTY", mode)

    return _set


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished dreamer run (steps 200, checkpoints at 100 and 200). Copy it before changing it."""
    from hydra import compose, initialize_config_module

    from rssm.config import register_configs

    register_configs()
    with initialize_config_module("rssm.configs", version_base=None):
        cfg = compose("config", overrides=list(RUN))
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(cfg, run_dir)
    return run_dir


def copy_run(finished: Path, where: Path) -> Path:
    shutil.copytree(finished, where)
    return where


def hashes(*dirs: Path) -> dict[str, str]:
    """sha256 of every file under `dirs`, by path."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in dirs if d.is_dir()
            for p in sorted(d.rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def refused(cfg, run_dir: Path, message: str, *unchanged: Path) -> None:
    """train(cfg, run_dir) raises a one-line UserError holding `message` and changes no file in `unchanged`."""
    before = hashes(*unchanged)
    with pytest.raises(UserError) as e:
        train(cfg, run_dir)
    assert message in one_line(str(e.value))
    assert hashes(*unchanged) == before
