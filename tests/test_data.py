import gymnasium as gym
import numpy as np
import pytest

from rssm.config import UserError
from rssm.envs import Collector, make_env, random_action, to_env_action
from rssm.replay import Replay


def transition(i, first=False):
    return {"obs": np.full(2, i, np.float32), "action": np.zeros(1, np.float32), "reward": np.float32(i),
            "is_first": np.bool_(first), "is_terminal": np.bool_(False)}


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


def test_collector_transitions_line_up_with_actions_and_episodes():
    env, spec = make_env("CartPole-v1")
    collector = Collector(env, spec, seed=0)
    rng = np.random.default_rng(0)
    first, episode = collector.step(random_action(spec, rng))
    assert first["is_first"] and not first["action"].any() and first["reward"] == 0 and episode is None
    episodes, rewards = [], 0.0
    while not episodes:
        action = random_action(spec, rng)
        step, episode = collector.step(action)
        np.testing.assert_array_equal(step["action"], action)
        rewards += step["reward"]
        if episode:
            episodes.append(episode)
            assert step["is_terminal"]
    assert episodes[0]["return"] == rewards == collector.env_steps
    after, _ = collector.step(random_action(spec, rng))
    assert after["is_first"]


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

    collector, rng = Collector(FlakyEnv({5}), spec, seed=0, remake=remake), np.random.default_rng(0)
    steps = [collector.step(random_action(spec, rng)) for _ in range(6)]
    assert [bool(t["is_first"]) for t, _ in steps] == [True, False, False, False, False, True]
    assert collector.failures == 1 and "raised in step after env step 4" in collector.last_error
    assert len(made) == 1 and collector.env is made[0]
    assert collector.env_steps == 4 and collector.episodes == 0 and all(e is None for _, e in steps)
    assert not collector.step(random_action(spec, rng))[0]["is_first"]


class BrokenReset(gym.Wrapper):
    def reset(self, **kwargs):
        raise OSError("cannot reach the simulator")


def test_an_env_that_keeps_raising_gives_up_with_a_user_error():
    _, spec = make_env("CartPole-v1")

    def remake():
        return BrokenReset(gym.make("CartPole-v1"))

    collector, rng = Collector(remake(), spec, seed=0, remake=remake, max_failures=3), np.random.default_rng(0)
    with pytest.raises(UserError, match="raised in reset .* 3 failures in a row, giving up"):
        collector.step(random_action(spec, rng))
