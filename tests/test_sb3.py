"""`rssm.sb3.DreamVecEnv`: stable-baselines3's VecEnv over the batched dream, on one tiny CartPole run."""

import importlib
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_module

import rssm
from rssm.config import register_configs

sb3 = pytest.importorskip("stable_baselines3")
from rssm.sb3 import DreamVecEnv  # noqa: E402 - after the skip: it needs stable-baselines3

RESET = 0.05  # CartPole-v1's reset draws each observation from U(-0.05, 0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished debug run of CartPole (its dreams start from resets of the real env)."""
    from rssm.training import train

    register_configs()
    root = tmp_path_factory.mktemp("sb3") / "cartpole"
    with initialize_config_module("rssm.configs", version_base=None):
        cfg = compose("config", overrides=["env=cartpole", "experiment=debug", "trainer.steps=200",
                                           "trainer.eval_episodes=1", "trainer.progress=false"])
        train(cfg, root)
    return rssm.load(root)


def test_ppo_learns_in_the_batched_dream(run):
    env = DreamVecEnv(run, 8)
    agent = sb3.PPO("MlpPolicy", env, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16]})
    assert agent.env is env  # SB3 takes it as its own VecEnv: no DummyVecEnv around it
    agent.learn(512)
    assert agent.num_timesteps == 512
    real = run.make_env()
    action, _ = agent.predict(real.reset(seed=0)[0], deterministic=True)
    assert real.action_space.contains(int(action))
    env.close()


@pytest.mark.parametrize("limit", [None, 1])
def test_a_step_is_gymnasium_s_first_step_with_sb3_s_autoreset(run, limit):
    """Seeded alike, the first step is `rssm.DreamVecEnv`'s: a finished env's real last observation is in its
    info as `terminal_observation` and its observation is a fresh reset (CartPole's: near zero), dones are
    terminated or truncated, `TimeLimit.truncated` the truncated; `max_episode_steps=1` truncates each episode
    the continue head does not end."""
    N = 16
    gym_env, env = rssm.DreamVecEnv(run, N, max_episode_steps=limit), DreamVecEnv(run, N, max_episode_steps=limit)
    actions = np.arange(N) % 2
    gym_env.reset(seed=3)
    want, _, terminated, truncated, _ = gym_env.step(actions)
    env.seed(3)
    assert np.array_equal(env.reset(), gym_env.reset(seed=3)[0])
    gym_env.step(actions)
    obs, rewards, dones, infos = env.step(actions)
    assert rewards.dtype == np.float32 and rewards.shape == (N,) and dones.dtype == bool and dones.shape == (N,)
    assert obs.dtype == np.float32 and obs.shape == (N, 4) and len(infos) == N
    assert np.array_equal(dones, terminated | truncated)
    assert [i["TimeLimit.truncated"] for i in infos] == list(truncated)
    assert [("terminal_observation" in i) for i in infos] == list(dones)
    assert np.array_equal(obs[~dones], want[~dones])
    assert np.array_equal(np.stack([i["terminal_observation"] for i in infos if "terminal_observation" in i]),
                          want[dones])
    assert (np.abs(obs[dones]) <= RESET).all() and not (np.abs(want[dones]) <= RESET).all()
    if limit is None:
        assert dones.any() and not dones.all() and not truncated.any()  # the tiny model ends some, not all
    else:
        assert dones.all() and truncated.any()


def test_later_steps_reset_exactly_the_finished_envs_and_a_seed_repeats_them(run):
    N, steps = 8, 12
    rollouts = []
    for _ in range(2):
        env = DreamVecEnv(run, N)
        env.seed(5)
        env.reset()
        rng = np.random.default_rng(0)
        seen = []
        for _ in range(steps):
            obs, rewards, dones, infos = env.step(rng.integers(2, size=N))
            assert [("terminal_observation" in i) for i in infos] == list(dones)
            assert (np.abs(obs[dones]) <= RESET).all()
            for i in np.flatnonzero(dones):
                last = infos[i]["terminal_observation"]
                assert last.shape == (4,) and last.dtype == np.float32 and not np.array_equal(last, obs[i])
            seen.append((obs, rewards, dones))
        rollouts.append(seen)
        env.close()
    assert sum(d.sum() for _, _, d in rollouts[0]) > N  # episodes end and start again
    for (o1, r1, d1), (o2, r2, d2) in zip(*rollouts, strict=True):
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and np.array_equal(d1, d2)


def test_attributes_methods_and_sb3_s_wrappers(run):
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import VecMonitor

    with pytest.raises(ValueError, match=r"^num_envs must be an int >= 1; got 0$"):
        DreamVecEnv(run, 0)
    env = DreamVecEnv(run, 3)
    assert env.observation_space == run.make_env().observation_space and env.action_space == run.make_env().action_space
    assert env.get_attr("render_mode") == [None] * 3 and env.render_mode is None
    assert env.get_attr("action_space", indices=[1, 2]) == [env.action_space] * 2
    env.set_attr("tag", "b", indices=1)
    assert env.get_attr("tag", indices=1) == ["b"] and not env.has_attr("tag")  # not every env has it
    with pytest.raises(AttributeError):
        env.get_attr("tag")
    env.reset()
    assert env.env_method("render") == [None] * 3  # without render_mode="rgb_array"
    assert env.env_is_wrapped(Monitor) == [False] * 3
    with pytest.raises(ValueError, match=r"actions must have the shape \(3,\)"):
        env.step(np.zeros(2, np.int64))
    monitored = VecMonitor(env)
    monitored.reset()
    ended = []
    for _ in range(20):
        *_, dones, infos = monitored.step(np.zeros(3, np.int64))
        ended += [i["episode"] for i, d in zip(infos, dones, strict=True) if d]
    assert ended and all(e["l"] >= 1 for e in ended)


def test_importing_it_without_stable_baselines3_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("stable_baselines3.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # an import of it fails, as where it is missing
    monkeypatch.delitem(sys.modules, "rssm.sb3")
    with pytest.raises(ImportError, match=r"^rssm.sb3 needs the stable_baselines3 package: pip install 'rssm\[sb3\]'$"):
        importlib.import_module("rssm.sb3")
