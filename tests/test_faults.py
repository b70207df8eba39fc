"""Bad input and faults: each ends in one line (status 2 for the user's input, 1 for a failed run, 128 + signum
after a signal), never a traceback, and loses nothing: the files of a run that are there stay as they were."""

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rssm.evaluate
import rssm.training
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.config import UserError
from rssm.training import RunStopped, train

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


# Configs under which the run cannot work, or would train nothing and exit 0.
@pytest.mark.parametrize("override, message", [
    ("trainer.eval_episodes=0", "trainer.eval_episodes must be > 0, got 0"),
    ("wm.lr=inf", "wm.lr must be a finite float32 number, got inf"),
    ("agent.gamma=nan", "agent.gamma must be a finite float32 number, got nan"),
    ("trainer.train_ratio=inf", "trainer.train_ratio must be a finite float32 number, got inf"),
    ("trainer.stop_return=-inf", "trainer.stop_return must be a finite float32 number, got -inf"),
    ("wm.lr=1e300", "wm.lr must be a finite float32 number, got 1e+300"),  # torch.optim raised on it
    ("trainer.train_ratio=0", "trainer.train_ratio must be > 0, got 0"),
    ("trainer.train_ratio=0.1", "trainer.train_ratio=0.1 makes 0.625 updates due in the 200 env steps after"),
    ("replay.capacity=7", "the replay holds 7 steps per env (replay.capacity / env.num_envs), fewer than one "
                           "sequence of replay.batch_length=8"),
    ("trainer.prefill=300", "trainer.prefill (300) must be below trainer.steps (300)"),
    ("trainer.steps=14", "trainer.steps (14) gives each of the 2 envs fewer steps than one sequence"),
    ("+trainer.speed=3", "unknown config key 'trainer.speed'"),
    ("trainer.steps=${oops}", "trainer.steps: cannot resolve the config: Interpolation key 'oops' not found"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("model.bins=1", "model.bins must be >= 2 (two-hot needs two bins), got 1"),
])
def test_configs_that_cannot_train_are_refused(compose_config, finished, tmp_path, override, message):
    extra = ("env.num_envs=2", "trainer.prefill=0", "replay.chunk=4") if "trainer.steps=14" in override else ()
    run_dir = copy_run(finished, tmp_path / "run")
    refused(compose_config(*DEBUG, *extra, override), run_dir, message, run_dir)
    refused(compose_config(*DEBUG, *extra, override, f"resume={run_dir}"), run_dir, message, run_dir)


def test_run_directories_that_cannot_be_used(compose_config, tmp_path, finished):
    cfg = compose_config(*RUN)
    a_file = tmp_path / "file"
    a_file.write_text("notes")
    refused(cfg, a_file, f"run directory {a_file} is a file", tmp_path)
    refused(cfg, a_file / "run", f"run directory {a_file / 'run'} lies under {a_file}, which is a file", tmp_path)
    run_dir = copy_run(finished, tmp_path / "run")
    refused(cfg, run_dir, f"{run_dir} already holds a run: continue it with rssm-train resume={run_dir}", run_dir)
    refused(compose_config(*RUN, f"resume={tmp_path / 'nowhere'}"), run_dir, f"no checkpoint at {tmp_path / 'nowhere'}",
            run_dir)
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size) -> a fresh tmpfs of `size` mounted under tmp_path (tests run as root in CI), unmounted after."""
    mounts = []

    def _mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")
        mounts.append(where)
        return where

    yield _mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def test_read_only_run_directories(compose_config, tmpfs, finished):
    disk = tmpfs("4m")
    run_dir = copy_run(finished, disk / "run")
    read_only(disk)
    refused(compose_config(*RUN), disk / "new", f"cannot write to {disk}: read-only file system")
    refused(compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]"),
            run_dir, f"cannot write to {run_dir}: read-only file system", run_dir)


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(compose_config, tmpfs, faulty):
    disk = tmpfs("5m")  # the checkpoint at 100 (2.7 MB) fits, not the one at 200 (3.5 MB) beside it
    run_dir = disk / "run"
    # The replay's tail (the rows after the last chunk) is one large tensor in the checkpoint: torch.save reports
    # the failed write of a large tensor as a RuntimeError, not an OSError.
    cfg = compose_config(*RUN, "env.id=faulty_envs:BigObs-v0", "trainer.prefill=50", "replay.chunk=512")
    refused(cfg, run_dir, f"cannot write {run_dir / CHECKPOINT}: No space left on device (the previous file, if any, "
            "is intact)")
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "model.pt").exists()


def test_a_replay_chunk_that_does_not_fit(compose_config, tmpfs, faulty):
    disk = tmpfs("96k")  # config and events fit, a 128 KB chunk does not
    run_dir = disk / "run"
    cfg = compose_config(*RUN, "env.id=faulty_envs:BigObs-v0", "replay.chunk=16", "trainer.checkpoint_every=1000")
    refused(cfg, run_dir, f"cannot write {run_dir / 'replay' / 'chunk_000000.npz'}: No space left on device")
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / CHECKPOINT).exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "the file is truncated or damaged"),
    ("code", "it holds objects other than tensors and plain data, and loading them could run code, so it is refused"),
    ("chunk", "cannot read replay chunk"),
])
def test_damaged_runs_refuse_to_resume(compose_config, finished, tmp_path, capfd, damage, message):
    run_dir = copy_run(finished, tmp_path / "run")
    path = run_dir / CHECKPOINT
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "code":
        torch.save({"format": 1, "payload": subprocess.CompletedProcess(["true"], 0)}, path)
    else:
        (run_dir / "replay" / "chunk_000001.npz").unlink()
    capfd.readouterr()
    cfg = compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]")
    refused(cfg, run_dir, message, run_dir)
    assert capfd.readouterr().err == ""  # no warning lines from torch


def eval_cli(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        rssm.evaluate.main([str(a) for a in argv])
    return e.value.code, one_line(capsys.readouterr().err)


def test_rssm_eval_errors(finished, tmp_path, capsys):
    stopped = copy_run(finished, tmp_path / "stopped")
    (stopped / "model.pt").unlink()  # as a run stopped by a signal leaves it: rssm-eval plays its checkpoint
    (tmp_path / "empty").mkdir()
    rssm.evaluate.main([str(stopped), "--episodes", "1", "--out", str(tmp_path / "stopped.json")])
    assert json.loads((tmp_path / "stopped.json").read_text())["episodes"] == 1
    cases = [
        ([tmp_path / "empty"], f"no rssm run at {tmp_path / 'empty'}: give a run directory"),
        ([tmp_path / "nowhere"], f"no rssm run at {tmp_path / 'nowhere'}: give a run directory"),
        ([stopped / "config.yaml"], f"{stopped / 'config.yaml'} is a file: give an rssm run directory"),
        ([finished, "--video", tmp_path / "no" / "a.gif"], f"the folder {tmp_path / 'no'} does not exist"),
        ([finished, "--out", tmp_path / "no" / "e.json"], f"the folder {tmp_path / 'no'} does not exist"),
    ]
    before = hashes(finished, stopped)
    for argv, message in cases:
        status, line = eval_cli(capsys, *argv)
        assert status == 2 and line.startswith("rssm-eval: error: ") and message in line, line
    assert hashes(finished, stopped) == before


def test_an_env_module_that_does_not_exist(compose_config, tmp_path):
    refused(compose_config(*RUN, "env.id=no_such_module:Env-v0"), tmp_path / "run",
            "cannot make environment 'no_such_module:Env-v0': ModuleNotFoundError: No module named 'no_such_module'")


def test_an_env_module_that_does_not_exist_from_the_cli(tmp_path, run_cli):
    proc = run_cli(*RUN, "env.id=no_such_module:Env-v0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 2
    assert "rssm-train: error: cannot make environment 'no_such_module:Env-v0'" in one_line(proc.stderr)


def test_a_flaky_env_gives_up_with_the_checkpoint_saved(compose_config, tmp_path, faulty, capsys):
    faulty("flaky")  # raises at every third step: never five failures in a row
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), run_dir)
    assert e.value.status == 1
    message = one_line(str(e.value))
    assert "RuntimeError('simulator crashed'); 5 failures within 9 env steps, giving up; checkpoint saved at " \
           "env step 10, continue with: rssm-train resume=" in message
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 10
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert [w.split("(failure ")[1] for w in warnings] == ["1; the next warning at failure 2)",
                                                          "2; the next warning at failure 4)",
                                                          "4; the next warning at failure 8)"]


def test_an_env_that_cannot_be_made_again_ends_the_run_with_the_checkpoint_saved(compose_config, tmp_path, faulty):
    faulty("crash_then_unmakeable")
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), run_dir)
    assert e.value.status == 1
    assert "making the env again failed too: cannot make environment 'faulty_envs:Faulty-v0': ConnectionError: the " \
           "simulator's licence server is down; checkpoint saved at env step 49" in one_line(str(e.value))
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 49


def test_ctrl_c_while_a_run_starts(compose_config, finished, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rssm.training, "build_agent", interrupted)
    run_dir = copy_run(finished, tmp_path / "run")
    before = hashes(run_dir)
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir)
    assert e.value.status == 128 + signal.SIGINT
    assert one_line(str(e.value)) == f"stopped by SIGINT while the run in {run_dir} was starting; no checkpoint was " \
                                     "written"
    assert hashes(run_dir) == before


def test_non_finite_observations_are_an_env_failure(compose_config, tmp_path, faulty, capsys):
    faulty("nan_once")
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["train/env_failures"] == 1 and (tmp_path / "run" / "model.pt").exists()
    assert "the env returned a non-finite observation 'obs'" in capsys.readouterr().err


def test_an_evaluation_env_that_fails_is_restarted(compose_config, tmp_path, faulty):
    faulty("raise_in_eval")
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["eval/return_mean"] > 0 and (tmp_path / "run" / "model.pt").exists()


def test_a_model_that_acts_with_nan_stops_the_run_keeping_the_checkpoint(compose_config, tmp_path, monkeypatch):
    from rssm.agent import Agent

    real_update = Agent.update

    def update_then_diverge(self, batch):  # a model gone bad in a way the update's own checks do not see
        metrics = real_update(self, batch)
        if int(self.wm_opt.state[self.wm_params[0]]["step"]) == 30:
            with torch.no_grad():
                self.actor.net.out.weight.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(Agent, "update", update_then_diverge)
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN), run_dir)
    assert e.value.status == 1
    message = re.fullmatch(r"the model's state or policy is not finite \(nan or inf\): it cannot act at env step "
                           r"(\d+); stopped, the last checkpoint in .*", one_line(str(e.value)))
    assert message and int(message[1]) > 100  # after the 30th update, the first checkpoint's 100 steps before it
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not (run_dir / "model.pt").exists()


def test_leftover_temporary_files_are_removed_once_the_lock_is_held(compose_config, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    leftovers = [run_dir / f"{CHECKPOINT}.4242.tmp", run_dir / "replay" / "chunk_000009.npz.4242.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    (run_dir / "notes.tmp").write_text("the user's")
    train(compose_config(*RUN, "trainer.steps=260", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir)
    assert not any(p.exists() for p in leftovers) and (run_dir / "notes.tmp").exists()
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 260


def fork_train(cfg, run_dir: Path) -> int:
    """train(cfg, run_dir) in a forked child; its pid. It exits 0 when done, 2 on a UserError, 3 otherwise."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            train(cfg, run_dir)
            code = 0
        except UserError:
            code = 2
        finally:
            os._exit(code)
    return pid


def wait_for(condition, pid: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        done, status = os.waitpid(pid, os.WNOHANG)
        assert not done, f"the run ended ({status}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def test_two_runs_in_one_directory(compose_config, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(*DEBUG, "agent=world_model", "trainer.steps=100000", "trainer.checkpoint_every=50",
                         "trainer.prefill=20")
    pid = fork_train(cfg, run_dir)
    try:
        wait_for(lambda: (run_dir / CHECKPOINT).exists(), pid, "checkpoint")
        os.kill(pid, signal.SIGSTOP)  # hold the first run still while the second tries
        refused(cfg, run_dir, f"{run_dir} is in use by another run; wait for it to end or pick another dir", run_dir)
        resume = compose_config(*DEBUG, "agent=world_model", "trainer.steps=100000", "trainer.checkpoint_every=50",
                                "trainer.prefill=20", f"resume={run_dir}")
        refused(resume, run_dir, f"{run_dir} is in use by another run", run_dir)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The OS released the dead run's lock: it can be continued.
    steps = load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"]
    train(compose_config(*DEBUG, "agent=world_model", f"trainer.steps={steps + 20}", "trainer.checkpoint_every=50",
                         "trainer.prefill=20", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir)
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == steps + 20


def needed_chunks_exist(run_dir: Path, chunk: int) -> int:
    """Every replay chunk the checkpoint needs is there, whole; returns its env steps (0 without one)."""
    if not (run_dir / CHECKPOINT).exists():
        return 0
    state = load_checkpoint(run_dir / CHECKPOINT)
    from rssm.replay import read_chunk

    for index in range(state["replay"]["total"] // chunk):
        assert len(read_chunk(run_dir / "replay" / f"chunk_{index:06d}.npz")["is_first"]) == chunk
    return state["collector"]["env_steps"]


def test_sigkill_at_random_moments_then_resume(compose_config, tmp_path):
    run_dir, rng = tmp_path / "run", random.Random(0)
    args = (*DEBUG, "agent=world_model", "trainer.prefill=20", "trainer.checkpoint_every=10", "replay.chunk=8")
    import torch._dynamo  # noqa: F401 - the optimizers import it on first use: once here, not in each child

    steps = []
    for kill in range(20):
        resume = (f"resume={run_dir}",) if (run_dir / CHECKPOINT).exists() else ()
        config = run_dir / "config.yaml"
        before = config.stat().st_ino if config.exists() else None
        pid = fork_train(compose_config(*args, "trainer.steps=100000", *resume), run_dir)
        # The run writes its config once it has resumed (a new file: atomic_write renames one into place).
        wait_for(lambda: config.exists() and config.stat().st_ino != before, pid, "resumed run")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment in the run: sleeping is the point here
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"kill {kill}: exit {status}"
        steps.append(needed_chunks_exist(run_dir, 8))
    assert steps == sorted(steps) and steps[-1] > 0  # no resume went back
    final = steps[-1] + 30
    train(compose_config(*args, f"trainer.steps={final}", f"resume={run_dir}", "allow_changes=[trainer.steps]"),
          run_dir)
    assert needed_chunks_exist(run_dir, 8) == final and (run_dir / "model.pt").exists()
    assert not list(run_dir.rglob("*.tmp"))


def test_ctrl_c_to_the_process_group_of_an_async_run_keeps_its_episodes(tmp_path, cli_environ):
    """A terminal's Ctrl-C reaches every process of the group, async env workers too: they ignore it, so no env
    fails, and the checkpoint holds the episodes under way."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rssm", *DEBUG, "agent=world_model", "env.num_envs=2",
                             "env.vector=async", "trainer.steps=100000", "trainer.checkpoint_every=100",
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_environ, cwd=tmp_path, start_new_session=True)  # its own process group
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert one_line(stderr).startswith("rssm-train: stopped by SIGINT at env step ") and "warning" not in stderr
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert state["collector"]["failures"] == 0 and any(e is not None for e in state["collector"]["under_way"])


def test_a_second_signal_during_the_save_does_not_interrupt_it(tmp_path, env_dir, cli_environ):
    run_dir = tmp_path / "run"
    environ = {**cli_environ, "PYTHONPATH": os.pathsep.join((str(env_dir), cli_environ["PYTHONPATH"]))}
    proc = subprocess.run([sys.executable, str(env_dir / "wrap_train.py"), *DEBUG, "agent=world_model",
                           "trainer.steps=100000", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                          env=environ, cwd=tmp_path, timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert one_line(proc.stderr) == (f"rssm-train: stopped by SIGINT at env step 150; checkpoint saved, continue "
                                     f"with: rssm-train resume={run_dir}")
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 150
    assert not list(run_dir.rglob("*.tmp"))


def eval_events(run_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    if "eval/return_mean" not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars("eval/return_mean")]


def test_sigterm_during_evaluation_stops_it_and_the_resumed_run_redoes_it(compose_config, tmp_path, env_dir,
                                                                          cli_environ, faulty):
    run_dir = tmp_path / "run"
    args = (*RUN, "env=gym", "env.id=faulty_envs:Faulty-v0", "trainer.eval_every=100", "trainer.eval_episodes=2")
    environ = {**cli_environ, "PYTHONPATH": os.pathsep.join((str(env_dir), cli_environ["PYTHONPATH"])),
               "FAULTY": "sigterm_in_eval"}
    proc = subprocess.run([sys.executable, "-m", "rssm", *args, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert one_line(proc.stderr).startswith("rssm-train: stopped by SIGTERM at env step 100; checkpoint saved")
    assert load_checkpoint(run_dir / CHECKPOINT)["progress"]["eval_pending"] is True
    assert eval_events(run_dir) == []

    faulty("")  # the same env, without the signal
    train(compose_config(*args, f"resume={run_dir}"), run_dir)
    straight = tmp_path / "straight"
    train(compose_config(*args), straight)
    assert [s for s, _ in eval_events(run_dir)] == [100, 200]
    # The evaluation at 100 is the straight run's. (After a resume, episodes start afresh: later ones differ.)
    assert eval_events(run_dir)[0] == eval_events(straight)[0]


# Work that must not be lost, and runs that must stop.


def test_a_disk_that_fills_mid_run_stops_it_keeping_the_last_checkpoint(compose_config, tmpfs, faulty, monkeypatch):
    disk = tmpfs("4m")
    run_dir, filler = disk / "run", disk / "filler"
    faulty("fill_disk")
    monkeypatch.setenv("FILL", str(filler))  # filled at env step 150; the first write after is replay chunk 4's
    args = (*RUN, "env.id=faulty_envs:Faulty-v0", "trainer.steps=300", "logger=[tensorboard,jsonl,csv]")
    with pytest.raises(UserError) as e:
        train(compose_config(*args), run_dir)
    assert one_line(str(e.value)) == (f"cannot write {run_dir / 'replay' / 'chunk_000004.npz'}: No space left on "
                                      f"device (the previous file, if any, is intact); stopped, the last checkpoint "
                                      f"in {run_dir} is kept")
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "model.pt").exists()
    filler.unlink()
    faulty("")
    last = train(compose_config(*args, f"resume={run_dir}"), run_dir)
    assert last["eval/return_mean"] > 0 and (run_dir / "model.pt").exists()


def test_a_disk_that_fills_saves_a_checkpoint_where_one_still_fits(compose_config, tmpfs, faulty, monkeypatch):
    disk = tmpfs("4m")
    run_dir, filler = disk / "run", disk / "filler"
    faulty("fill_disk")
    monkeypatch.setenv("FILL", str(filler))
    real = rssm.training._save_after

    def room_made(*args):  # space freed after the failed write: the stopping run's checkpoint fits
        filler.unlink()
        return real(*args)

    monkeypatch.setattr(rssm.training, "_save_after", room_made)
    args = (*RUN, "env.id=faulty_envs:Faulty-v0", "trainer.steps=300", "trainer.checkpoint_every=0")
    with pytest.raises(UserError) as e:
        train(compose_config(*args), run_dir)
    assert one_line(str(e.value)).endswith(f"No space left on device (the previous file, if any, is intact); "
                                           f"checkpoint saved at env step 154, continue with: rssm-train "
                                           f"resume={run_dir} once there is room")
    assert (run_dir / "replay" / "chunk_000004.npz").is_file()  # the chunk that failed, written with the checkpoint
    faulty("")
    last = train(compose_config(*args, f"resume={run_dir}"), run_dir)
    assert last["eval/return_mean"] > 0 and (run_dir / "model.pt").exists()


def test_a_second_signal_ends_a_run_whose_env_hangs(tmp_path, env_dir, cli_environ, compose_config, faulty):
    run_dir, mark = tmp_path / "run", tmp_path / "hanging"
    args = (*RUN, "env=gym", "env.id=faulty_envs:Faulty-v0", "trainer.checkpoint_every=0")
    environ = {**cli_environ, "PYTHONPATH": os.pathsep.join((str(env_dir), cli_environ["PYTHONPATH"])),
               "FAULTY": "hang", "HANG_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-m", "rssm", *args, f"hydra.run.dir={run_dir}"],
                            stderr=subprocess.PIPE, text=True, env=environ, cwd=tmp_path)
    wait_for(mark.exists, proc.pid, "the env to hang", timeout=120)
    proc.send_signal(signal.SIGINT)  # noted: the loop would stop at its next step, which never comes
    time.sleep(1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert one_line(stderr) == (f"rssm-train: stopped by a second SIGTERM at env step 29 while waiting on the env; "
                                f"checkpoint saved, continue with: rssm-train resume={run_dir}")
    faulty("")
    last = train(compose_config(*args, f"resume={run_dir}"), run_dir)
    assert last["eval/return_mean"] > 0 and (run_dir / "model.pt").exists()


def test_a_step_timeout_restarts_an_env_that_hangs(compose_config, tmp_path, faulty, capsys):
    faulty("hang_once")
    start = time.monotonic()
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0", "env.step_timeout=1"), tmp_path / "run")
    assert last["train/env_failures"] == 1 and time.monotonic() - start < 600
    assert "environment raised in step after env step 29: EnvTimeout('no answer within env.step_timeout=1 s')" \
        in capsys.readouterr().err


@pytest.mark.parametrize("mode, raised", [("system_exit", "SystemExit(3)"),
                                          ("keyboard_interrupt", "KeyboardInterrupt()")])
def test_an_env_that_raises_system_exit_or_keyboard_interrupt_has_failed(compose_config, tmp_path, faulty, capsys,
                                                                         mode, raised):
    faulty(mode)
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["train/env_failures"] == 1 and (tmp_path / "run" / "model.pt").exists()
    assert f"environment raised in step after env step 29: {raised}; env restarted" in capsys.readouterr().err


def test_an_mlflow_server_that_cannot_be_reached_is_refused_at_once(compose_config, tmp_path):
    pytest.importorskip("mlflow")
    start = time.monotonic()
    refused(compose_config(*RUN, "logger.mlflow.enabled=true", "logger.mlflow.tracking_uri=http://127.0.0.1:9"),
            tmp_path / "run", "logger.mlflow.tracking_uri=http://127.0.0.1:9: cannot reach 127.0.0.1:9: Connection "
                              "refused")
    assert time.monotonic() - start < 10 and not (tmp_path / "run").exists()


def test_a_directory_holding_a_model_without_its_checkpoint_is_refused(compose_config, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    (run_dir / CHECKPOINT).unlink()
    refused(compose_config(*RUN), run_dir, f"{run_dir} already holds a run's model.pt (without its checkpoint.pt, so "
                                           f"the run cannot be continued): pick another dir", run_dir)


def test_ctrl_c_in_rssm_eval(finished, tmp_path):
    proc = subprocess.Popen(["rssm-eval", str(finished), "--episodes", "100000", "--out", str(tmp_path / "e.json")],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(10)  # loading (a signal before its handler is installed is a KeyboardInterrupt), then playing
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert one_line(stderr) == "rssm-eval: stopped by SIGINT while playing the episodes; nothing written"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_rssm_eval_writes_its_video(finished, tmp_path, capsys, monkeypatch):
    real = rssm.evaluate.encode_gif

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(rssm.evaluate, "encode_gif", signalled)
    video = tmp_path / "a.gif"
    with pytest.raises(SystemExit) as e:
        rssm.evaluate.main([str(finished), "--episodes", "1", "--out", str(tmp_path / "e.json"), "--video", str(video)])
    assert e.value.code == 128 + signal.SIGTERM
    assert one_line(capsys.readouterr().err) == "rssm-eval: stopped by SIGTERM after its files were written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "e.json"]


# Refusals leave the file system as they found it.


def test_a_refused_config_leaves_no_directory(tmp_path, run_cli):
    proc = run_cli("trainer.steps=0", f"hydra.run.dir={tmp_path / 'a' / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and one_line(proc.stderr) == "rssm-train: error: trainer.steps must be > 0, got 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    (("model.units=1000000",), "not enough memory for the model (model.deter=32, model.units=1000000, model.groups=4, "
                               "model.classes=4) on cpu: one array alone needs 4,000.0 GB"),
    (("model.groups=100000", "model.classes=100000"), "not enough memory for the model"),
    (("replay.capacity=100000000000",), "replay.capacity=100,000,000,000 needs 3,000.0 GB of memory for the replay "
                                        "(100,000,000,000 transitions x 30 bytes), more than this machine's"),
    (("env.pixels=true", "env.image_size=1000000"), "not enough memory for the env's observations "
                                                     "(env.image_size=1000000): one array alone needs"),
])
def test_memory_the_run_cannot_have_is_refused_before_anything_is_written(compose_config, tmp_path, overrides,
                                                                          message):
    refused(compose_config(*RUN, *overrides), tmp_path / "run", message)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_writes_nothing(compose_config, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    shutil.rmtree(run_dir / "replay")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    refused(compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir,
            "cannot read replay chunk", run_dir)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # no replay/ made again


def test_an_env_whose_close_raises(compose_config, tmp_path, faulty, capsys):
    faulty("close_raises")
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["eval/return_mean"] > 0 and (tmp_path / "run" / "model.pt").exists()
    assert "rssm: warning: the env's close() raised RuntimeError: the simulator's licence lapsed; ignored" \
        in capsys.readouterr().err


def test_an_action_space_whose_repr_spans_lines(compose_config, tmp_path, faulty):
    refused(compose_config(*RUN, "env.id=faulty_envs:GridActions-v0"), tmp_path / "run",
            "environment 'faulty_envs:GridActions-v0': unsupported action space MultiDiscrete([[2 3] [4 5]]): rssm "
            "needs Discrete, 1-D MultiDiscrete or 1-D Box")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["plain-run", "a b,c=[d]'e\"f", "x$y\\"])
def test_the_printed_resume_command_works_when_pasted(compose_config, finished, tmp_path, cli_environ, name):
    run_dir = copy_run(finished, tmp_path / name)
    with pytest.raises(UserError) as e:
        train(compose_config(*RUN), run_dir)
    command = re.fullmatch(r".* already holds a run: continue it with (.*) or pick another dir", str(e.value))[1]
    if name == "plain-run":
        assert command == f"rssm-train resume={run_dir}"
    # A finished run: resuming it trains nothing, and ends well only if the path came through whole.
    pasted = command.replace("rssm-train", f"{shlex.quote(sys.executable)} -m rssm", 1)
    proc = subprocess.run(["bash", "-c", f"{pasted} trainer.progress=false"], capture_output=True, text=True,
                          env=cli_environ, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"rssm: resumed from {run_dir / CHECKPOINT} at env step 200" in proc.stdout


@pytest.mark.parametrize("command, argv, message", [
    ("eval", ["--episodes", "0"], "argument --episodes: expected an integer >= 1, got 0"),
    ("eval", ["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    ("eval", ["--episodes", "two"], "argument --episodes: expected an integer >= 1, got 'two'"),
    ("dream", ["--fps", "nan"], "argument --fps: expected a finite number > 0, got nan"),
    ("dream", ["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    ("plot", ["--xmax", "inf"], "argument --xmax: expected a finite number > 0, got inf"),
    ("plot", ["--ylim", "1", "0"], "argument --ylim: LOW must be below HIGH, got 1 0"),
    ("plot", ["--reference-repeat", "0"], "argument --reference-repeat: expected an integer >= 1, got 0"),
    ("plot", ["--nope"], "unrecognized arguments: --nope"),
])
def test_bad_flags_of_every_command_are_one_line(finished, tmp_path, capsys, command, argv, message):
    import rssm.dream
    import rssm.plot

    main = {"eval": rssm.evaluate.main, "dream": rssm.dream.main, "plot": rssm.plot.main}[command]
    extra = ["--out", str(tmp_path / "out")] if command == "plot" else []
    with pytest.raises(SystemExit) as e:
        main([str(finished), *argv, *extra])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err) == f"rssm-{command}: error: {message} (see rssm-{command} --help)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["eval", "dream"])
def test_a_device_that_does_not_exist(finished, tmp_path, capsys, command):
    import rssm.dream

    main = {"eval": rssm.evaluate.main, "dream": rssm.dream.main}[command]
    with pytest.raises(SystemExit) as e:
        main([str(finished), "--device", "banana", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err) == (f"rssm-{command}: error: device=banana is not a device: give auto, "
                                                 f"cpu, cuda or cuda:N")


def test_an_offline_run_whose_dataset_is_missing_leaves_no_directory(compose_config, tmp_path, monkeypatch):
    pytest.importorskip("minari")
    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    refused(compose_config(*DEBUG, "agent=world_model", "offline.minari=no/such-v0"), tmp_path / "out" / "run",
            "cannot load the Minari dataset 'no/such-v0'")
    assert not (tmp_path / "out").exists()
