import gymnasium as gym
import numpy as np
import pytest

from rssm.collector import Collector, make_envs
from rssm.config import UserError
from rssm.envs import make_env, random_action, to_env_action
from rssm.replay import Replay


def transition(i, first=False, envs=1):
    """One replay row: env e's transition holds the values 100 * e + i."""
    value = 100 * np.arange(envs, dtype=np.float32) + i  # (envs,)
    return {"obs": np.repeat(value[:, None], 2, 1), "action": np.zeros((envs, 1), np.float32), "reward": value,
            "is_first": np.full(envs, first), "is_terminal": np.zeros(envs, bool)}


def test_replay_windows_are_consecutive_and_never_cross_the_write_pointer():
    replay = Replay(capacity=10, seed=0)
    for i in range(23):  # wraps twice: slots hold 13..22, oldest at the write pointer
        replay.add(transition(i))
    assert len(replay) == 10
    batch = replay.sample(500, 4)
    assert batch["obs"].shape == (500, 4, 2) and batch["reward"].shape == (500, 4)
    r = batch["reward"]
    assert (np.diff(r, axis=1) == 1).all()  # consecutive in time, so no window spans old and new data
    assert r.min() >= 13 and r.max() <= 22
    assert set(r[:, 0].astype(int)) == set(range(13, 20))  # every valid start is sampled
    assert batch["is_first"][:, 0].all()


def test_replay_refuses_windows_longer_than_its_content():
    replay = Replay(capacity=10, seed=0)
    replay.add(transition(0))
    with pytest.raises(ValueError):
        replay.sample(2, 3)


def test_sampled_sequences_never_mix_envs():
    replay = Replay(capacity=30, seed=0, envs=3)  # 10 rows of 3 envs
    for i in range(14):
        replay.add(transition(i, envs=3))
    assert len(replay) == 10 and replay.data["obs"].shape == (10, 3, 2)
    r = replay.sample(600, 5)["reward"]  # (B, T): 100 * env + step
    env, step = r // 100, r % 100
    assert (env == env[:, :1]).all()  # one env per sequence
    assert (np.diff(step, axis=1) == 1).all()  # consecutive steps of it
    assert set(env[:, 0].astype(int)) == {0, 1, 2} and step.min() >= 4


def one_env(env_id="CartPole-v1", **kwargs):
    env, spec = make_env(env_id, **kwargs)
    return make_envs(lambda: env, 1), spec


def test_collector_transitions_line_up_with_actions_and_episodes():
    envs, spec = one_env()
    collector = Collector(envs, spec, seed=0)
    rng = np.random.default_rng(0)
    first, episodes = collector.step(random_action(spec, rng))
    assert first["is_first"][0] and not first["action"].any() and first["reward"][0] == 0 and not episodes
    ended, rewards = [], 0.0
    while not ended:
        action = random_action(spec, rng)
        step, ended = collector.step(action)
        np.testing.assert_array_equal(step["action"], action)
        rewards += step["reward"][0]
        if ended:
            assert step["is_terminal"][0]
    assert ended[0]["return"] == rewards == collector.env_steps
    after, _ = collector.step(random_action(spec, rng))
    assert after["is_first"][0]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_vector_envs_reset_each_env_on_its_own(kind):
    _, spec = make_env("CartPole-v1")
    envs = make_envs(lambda: make_env("CartPole-v1")[0], 3, kind)
    collector, rng = Collector(envs, spec, seed=0), np.random.default_rng(0)
    rows, ended = [], []
    try:
        for _ in range(120):
            row, episodes = collector.step(random_action(spec, rng, 3))
            rows.append(row)
            ended += episodes
    finally:
        envs.close()
    first = np.stack([r["is_first"] for r in rows])  # (T, 3)
    terminal = np.stack([r["is_terminal"] for r in rows])  # (T, 3)
    assert first[0].all() and first[1:].any()
    # An env starts a new episode exactly on the step after its episode ended, whatever the others do.
    np.testing.assert_array_equal(first[1:], terminal[:-1])
    assert not first.all(axis=1)[1:].any()  # the envs end their episodes at different times
    assert collector.env_steps == (~first).sum() and collector.episodes == len(ended) == terminal.sum()
    rewards = np.stack([r["reward"] for r in rows])
    assert (rewards[first] == 0).all() and (rewards[~first] == 1).all()
    # Different seeds per env: the first observations differ.
    assert len({tuple(o) for o in rows[0]["obs"]}) == 3


def test_continuous_actions_rescale_to_bounds():
    _, spec = make_env("Pendulum-v1")
    assert not spec.discrete and spec.action_dim == 1
    np.testing.assert_allclose(to_env_action(np.array([-1.0], np.float32), spec), [-2.0])
    np.testing.assert_allclose(to_env_action(np.array([0.5], np.float32), spec), [1.0])
    np.testing.assert_allclose(to_env_action(np.array([3.0], np.float32), spec), [2.0])


@pytest.mark.parametrize("env_id, words", [("NoSuchEnv-v0", "cannot make"), ("FrozenLake-v1", "observation space"),
                                           ("Blackjack-v1", "observation space")])
def test_unsupported_envs_raise_user_errors(env_id, words):
    with pytest.raises(UserError, match=words):
        make_env(env_id)


class FlakyEnv(gym.Wrapper):
    """CartPole whose `step` raises on the given calls, counted over all instances."""

    calls = 0

    def __init__(self, fail_at: set[int]):
        super().__init__(gym.make("CartPole-v1"))
        self.fail_at = fail_at

    def step(self, action):
        FlakyEnv.calls += 1
        if FlakyEnv.calls in self.fail_at:
            raise RuntimeError("simulator crashed")
        return self.env.step(action)


def test_an_env_that_raises_is_restarted_and_the_broken_episode_is_cut():
    FlakyEnv.calls = 0
    _, spec = make_env("CartPole-v1")
    made = []

    def remake():
        made.append(FlakyEnv(set()))
        return made[-1]

    flaky = FlakyEnv({5})
    collector = Collector(make_envs(lambda: flaky, 1), spec, seed=0, remake=lambda: make_envs(remake, 1))
    rng = np.random.default_rng(0)
    steps = [collector.step(random_action(spec, rng)) for _ in range(6)]
    assert [bool(t["is_first"][0]) for t, _ in steps] == [True, False, False, False, False, True]
    assert collector.failures == 1 and "raised in step after env step 4" in collector.last_error
    assert len(made) == 1 and collector.envs.envs[0].env is made[0]
    assert collector.env_steps == 4 and collector.episodes == 0 and not any(e for _, e in steps)
    assert not collector.step(random_action(spec, rng))[0]["is_first"][0]


class CrashesAtStep5(gym.Wrapper):
    """CartPole whose fifth `step` raises (counted per instance, so it works in a subprocess too)."""

    def __init__(self):
        super().__init__(gym.make("CartPole-v1"))
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == 5:
            raise RuntimeError("simulator crashed")
        return self.env.step(action)


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium relays the workers' tracebacks as warnings
def test_async_envs_that_raise_are_restarted():
    _, spec = make_env("CartPole-v1")
    collector = Collector(make_envs(CrashesAtStep5, 2, "async"), spec, seed=0,
                          remake=lambda: make_envs(CrashesAtStep5, 2, "async"))
    rng = np.random.default_rng(0)
    try:
        firsts = [collector.step(random_action(spec, rng, 2))[0]["is_first"] for _ in range(7)]
    finally:
        collector.envs.close()
    assert collector.failures == 1 and "raised in step after env step 8" in collector.last_error
    assert [f.tolist() for f in firsts] == [[True, True]] + [[False, False]] * 4 + [[True, True], [False, False]]


class BrokenReset(gym.Wrapper):
    def reset(self, **kwargs):
        raise OSError("cannot reach the simulator")


def test_an_env_that_keeps_raising_gives_up_with_a_user_error():
    _, spec = make_env("CartPole-v1")

    def remake():
        return BrokenReset(gym.make("CartPole-v1"))

    collector = Collector(make_envs(remake, 1), spec, seed=0, remake=lambda: make_envs(remake, 1), max_failures=3)
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="raised in reset .* 3 failures within 1 env steps, giving up"):
        collector.step(random_action(spec, rng))
