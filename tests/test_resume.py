"""A run stopped at any env step and resumed equals the run that was never stopped: the same logged scalars,
replay, weights and everything else in the final checkpoint."""

import os
import random
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_checkpoint import assert_same_state

from rssm.build import build_agent
from rssm.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from rssm.collector import Collector, make_envs
from rssm.envs import make_env, random_action
from rssm.evaluate import evaluate_policy
from rssm.replay import Replay
from rssm.training import RunStopped, open_loop_metrics, train

# Evaluations (mode policy, 40-step episodes at most), open-loop errors and logs fall in both halves of a run.
RUN = ("experiment=debug", "trainer.progress=false", "trainer.steps=240", "trainer.prefill=60",
       "trainer.log_every=40", "trainer.eval_every=80", "trainer.eval_episodes=1", "trainer.openloop_every=60",
       "trainer.openloop_context=3", "trainer.openloop_horizons=[1,4]", "env.time_limit=40", "replay.chunk=32",
       "trainer.checkpoint_every=100")
WALL_CLOCK = ("perf/env_steps_per_s", "perf/updates_per_s")


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every logged scalar but the wall-clock rates, as (step, value) in order."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if tag not in WALL_CLOCK}


def replay_rows(run_dir) -> dict[str, np.ndarray]:
    """The whole replay of a finished run: its chunk files, then the checkpoint's tail."""
    state = load_checkpoint(run_dir / CHECKPOINT)["replay"]
    rows: dict[str, list] = {k: [] for k in state["tail"]}
    for path in sorted((run_dir / "replay").glob("chunk_*.npz")):
        with np.load(path) as chunk:
            for k in rows:
                rows[k].append(chunk[k])
    for k, v in state["tail"].items():
        rows[k].append(v.numpy())
    return {k: np.concatenate(v) for k, v in rows.items()}


def date_back(run_dir) -> None:
    """Date the run's event files a second back. TensorBoard reads a directory's event files in the order of
    their names, `events.out.tfevents.SECONDS.HOST.PID.N` with N counting writers in the process: two runs in
    one test process within one second can sort as 10 before 9, putting the resumed run's events first."""
    for path in run_dir.glob("events.out.tfevents.*"):
        *head, seconds, tail = path.name.split(".", 4)  # events, out, tfevents, SECONDS, HOST.PID.N
        path.rename(path.with_name(".".join([*head, f"{int(seconds) - 1:010d}", tail])))


def stop_when(monkeypatch, condition):
    """SIGTERM to this process right after the training collector's step for which `condition(calls, episodes,
    collector)` holds: the run saves and stops before its next env step. (An evaluation's collector has the
    seed 10,000 + the run's seed, 0 here.)"""
    real, calls = Collector.step, [0]

    def step(self, actions):
        out = real(self, actions)
        if self.seed == 0:
            calls[0] += 1
            if condition(calls[0], out[1], self):
                os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Collector, "step", step)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """straight(*overrides) -> the directory of a run never stopped (made once per overrides)."""
    from hydra import compose, initialize_config_module

    from rssm.config import register_configs

    made = {}

    def _run(*overrides):
        if overrides not in made:
            register_configs()
            with initialize_config_module("rssm.configs", version_base=None):
                cfg = compose("config", overrides=[*RUN, *overrides])
            made[overrides] = tmp_path_factory.mktemp("straight")
            train(cfg, made[overrides])
        return made[overrides]

    return _run


def stop_and_resume(compose_config, monkeypatch, run_dir, overrides, condition) -> dict:
    """Run until `condition` stops it, then resume it to the end; returns the checkpoint the stop saved."""
    stop_when(monkeypatch, condition)
    with pytest.raises(RunStopped) as stopped:
        train(compose_config(*RUN, *overrides), run_dir)
    assert stopped.value.status == 128 + signal.SIGTERM
    monkeypatch.undo()
    at_stop = load_checkpoint(run_dir / CHECKPOINT)
    date_back(run_dir)
    train(compose_config(*RUN, *overrides, f"resume={run_dir}"), run_dir)
    return at_stop


def assert_same_run(a, b) -> None:
    """Identical logged scalars, replay rows and final checkpoints (all but the config, whose `resume`
    differs): weights, optimizers, collector, loop state and RNGs."""
    assert scalars(a) == scalars(b)
    rows_a, rows_b = replay_rows(a), replay_rows(b)
    assert rows_a.keys() == rows_b.keys()
    for k in rows_a:
        np.testing.assert_array_equal(rows_a[k], rows_b[k], err_msg=k)
    final_a, final_b = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
    del final_a["config"], final_b["config"]
    assert_same_state(final_a, final_b)
    assert_same_state(torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True))


# DreamerV3's data pipeline (algo=dreamerv3): states stored in the replay and written back by every update, whose
# rewritten chunk files a checkpoint must bring up to date; the online queue; updates from the first full batch.
PIPELINE = ("agent=dreamer", "replay.context=1", "replay.online=true", "trainer.prefill=0",
            "trainer.eval_policy=sample")


@pytest.mark.parametrize("overrides, stop_at", [
    (("agent=dreamer",), 107),
    (("agent=world_model",), 151),
    (("agent=dreamer", "env.num_envs=2", "env.vector=async"), 65),
    (PIPELINE, 107),
    ((*PIPELINE, "env.num_envs=2"), 65),
])
def test_a_run_stopped_mid_episode_resumes_as_if_never_stopped(compose_config, tmp_path, monkeypatch, straight,
                                                               overrides, stop_at):
    reference = straight(*overrides)
    at_stop = stop_and_resume(compose_config, monkeypatch, tmp_path, overrides, lambda calls, *_: calls == stop_at)
    under_way = at_stop["collector"]["under_way"]
    assert all(e is not None and len(e["actions"]) > 0 for e in under_way)  # every env mid-episode
    assert len(at_stop["progress"]["tracker"]["loss/wm"]) > 0  # metrics waiting for the next log
    assert_same_run(reference, tmp_path)
    if "agent=dreamer" in overrides:  # evaluations ran in both halves
        evals = [step for step, _ in scalars(tmp_path)["eval/return_mean"]]
        assert len(evals) == 3 and evals[0] < at_stop["collector"]["env_steps"] < evals[1]


@pytest.mark.parametrize("overrides", [("agent=dreamer",), ("agent=dreamer", "env.num_envs=2", "env.vector=async")])
def test_a_run_stopped_at_an_episode_end_resumes_as_if_never_stopped(compose_config, tmp_path, monkeypatch,
                                                                     straight, overrides):
    reference = straight(*overrides)

    def episode_ended(calls, episodes, collector):
        return calls > 70 and episodes

    at_stop = stop_and_resume(compose_config, monkeypatch, tmp_path, overrides, episode_ended)
    assert any(at_stop["collector"]["done"]) and None in at_stop["collector"]["under_way"]
    assert_same_run(reference, tmp_path)


class Crash(BaseException):
    """Ends a run as a kill would: no handler saves anything (the collector restarts envs on an Exception)."""


@pytest.mark.parametrize("overrides", [("agent=dreamer",), PIPELINE])
def test_a_run_killed_after_a_checkpoint_resumes_from_it_as_if_never_stopped(compose_config, tmp_path,
                                                                             monkeypatch, straight, overrides):
    reference = straight(*overrides)
    real = Collector.step

    def step(self, actions):
        if self.remake is not None and self.env_steps == 150:
            raise Crash
        return real(self, actions)

    monkeypatch.setattr(Collector, "step", step)
    with pytest.raises(Crash):
        train(compose_config(*RUN, *overrides), tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] == 100
    assert scalars(tmp_path)["loss/wm"][-1][0] == 120  # logged after the checkpoint, dropped by the resume
    date_back(tmp_path)
    train(compose_config(*RUN, *overrides, f"resume={tmp_path}"), tmp_path)
    assert_same_run(reference, tmp_path)


class SeedlessEnv(gym.Env):
    """A 20-step episode whose start ignores the reset's seed: it comes from the OS's entropy."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.rng, self.t = np.random.default_rng(), 0

    def reset(self, *, seed=None, options=None):
        self.start, self.t = self.rng.uniform(-1, 1, 2).astype(np.float32), 0
        return self.start, {}

    def step(self, action):
        self.t += 1
        return self.start * (1 - self.t / 20), 1.0, self.t == 20, False, {}


def test_a_non_deterministic_env_warns_once_and_starts_a_new_episode(compose_config, tmp_path, monkeypatch, capsys):
    gym.register("rssm-test/Seedless-v0", entry_point=SeedlessEnv)
    overrides = ("agent=world_model", "env.id=rssm-test/Seedless-v0", "env.time_limit=0", "env.num_envs=2",
                 "trainer.steps=120")
    at_stop = stop_and_resume(compose_config, monkeypatch, tmp_path, overrides, lambda calls, *_: calls == 45)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rssm: warning:")]
    assert len(warnings) == 1 and "env 0, 1 did not come back" in warnings[0], warnings
    rows = replay_rows(tmp_path)
    resumed_at = at_stop["replay"]["total"]
    assert rows["is_first"][resumed_at].all() and not rows["is_first"][resumed_at - 1].any()
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] == 120


def test_an_old_checkpoint_without_episodes_resumes_with_new_ones(compose_config, tmp_path, monkeypatch, capsys):
    overrides = ("agent=dreamer", "env.num_envs=2")
    stop_when(monkeypatch, lambda calls, *_: calls == 50)
    with pytest.raises(RunStopped):
        train(compose_config(*RUN, *overrides), tmp_path)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / CHECKPOINT)
    state["collector"] = {k: state["collector"][k] for k in ("env_steps", "episodes", "failures")}
    state["progress"] = {k: state["progress"][k] for k in ("updates", "updates_due", "last_return")}
    del state["format"]
    save_checkpoint(tmp_path / CHECKPOINT, state)  # the layout before episodes and the loop's state were saved
    capsys.readouterr()
    train(compose_config(*RUN, *overrides, f"resume={tmp_path}"), tmp_path)
    assert "warning" not in capsys.readouterr().err
    rows = replay_rows(tmp_path)
    assert rows["is_first"][state["replay"]["total"]].all()  # every env started a new episode
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] >= 240


ATARI = {"image_size": 16, "sticky_actions": 0.25, "noop_max": 30}  # both random, from the RNG a reset seeds


@pytest.mark.parametrize("env_id, kwargs, kind, before, taken", [
    ("Pendulum-v1", {}, "sync", 11, None),  # the 10-step episodes just ended: the next step resets them
    ("Pendulum-v1", {}, "async", 12, 0),  # the reset row: no action taken yet
    ("Pendulum-v1", {}, "async", 17, 5),
    ("CartPole-v1", {}, "sync", 17, ...),  # the three envs' episodes end at different steps
    ("ALE/Pong-v5", ATARI, "sync", 17, ...),  # no-op frames count toward the time limit
])
def test_collector_state_rebuilds_the_episodes_under_way(env_id, kwargs, kind, before, taken):
    """A fresh collector on fresh envs, loaded with another's state after `before` steps, steps on exactly as
    that one does, through episode ends (10-step episodes at most) and back."""
    _, spec = make_env(env_id, time_limit=10, **kwargs)
    rng = np.random.default_rng(0)
    a = Collector(make_envs(lambda: make_env(env_id, time_limit=10, **kwargs)[0], 3, kind), spec, seed=5)
    b = Collector(make_envs(lambda: make_env(env_id, time_limit=10, **kwargs)[0], 3, kind), spec, seed=5)
    try:
        for _ in range(before):
            a.step(random_action(spec, rng, 3))
        state = a.state_dict()
        if taken is not ...:
            assert [None if e is None else len(e["actions"]) for e in state["under_way"]] == [taken] * 3
        b.load_state_dict(state)
        ended = []
        for _ in range(25):
            actions = random_action(spec, rng, 3)
            (ta, ea), (tb, eb) = a.step(actions), b.step(actions)
            assert ea == eb
            ended += ea
            for k in ta:
                np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
        assert len(ended) >= 3 and a.env_steps == b.env_steps
    finally:
        a.envs.close()
        b.envs.close()


def test_evaluation_and_open_loop_errors_leave_the_training_rngs_alone(compose_config):
    cfg = compose_config(*RUN)
    env, spec = make_env(cfg.env.id)
    agent = build_agent(cfg, spec, torch.device("cpu"))
    replay, rng = Replay(1000, 0), np.random.default_rng(0)
    collector = Collector(make_envs(lambda: env, 1), spec, seed=0)
    for _ in range(60):
        replay.add(collector.step(random_action(spec, rng))[0])
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = evaluate_policy(agent, cfg, 2, steps=80)
    errors, _ = open_loop_metrics(cfg, agent, replay, steps=80)
    assert errors and random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])
    torch.manual_seed(123)  # the global generator elsewhere: the same evaluation all the same
    assert evaluate_policy(agent, cfg, 2, steps=80) == first


def test_each_evaluation_plays_starts_of_its_own_and_a_redone_one_the_same(compose_config):
    cfg = compose_config(*RUN)
    env, spec = make_env(cfg.env.id)
    agent = build_agent(cfg, spec, torch.device("cpu"))

    class Recording:  # the agent, noting the first observation of each episode it plays
        device = agent.device

        def __init__(self):
            self.starts = []

        def act(self, transitions, state, explore):
            self.starts += [o for o, first in zip(transitions["obs"], transitions["is_first"], strict=True) if first]
            return agent.act(transitions, state, explore)

    def starts(steps):
        recording = Recording()
        evaluate_policy(recording, cfg, 3, steps=steps)
        return np.stack(recording.starts)

    at80 = starts(80)
    assert len(at80) == 3 and len({tuple(s) for s in at80}) == 3
    np.testing.assert_array_equal(starts(80), at80)
    assert not np.isin(starts(160), at80).all(axis=1).any()
