"""The world model in the env's terms: `EnvModel.imagine`, `DreamEnv` and `DreamVecEnv` (the `runs` fixture of
conftest.py: finished debug runs)."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from test_dream import short_debug_run

import rssm
from rssm.agent import to_torch
from rssm.config import UserError
from rssm.distributions import symexp
from rssm.envs import from_env_action, to_env_action
from rssm.openloop import predict_open_loop
from rssm.replay_read import checkpoint_tail


def real_episode(run, steps: int, seed: int = 0):
    """The first steps + 1 observations of an episode of the run's real env under random actions, and the
    actions between them."""
    env = run.make_env()
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    seen, taken = [obs], []
    for _ in range(steps):
        action = env.action_space.sample()
        obs, *_ = env.step(action)
        seen.append(obs), taken.append(action)
    return np.stack(seen), np.stack(taken)


def test_env_actions_round_trip_through_the_model_s():
    spec = rssm.envs.EnvSpec({"obs": (3,)}, (3, 2), True)
    indices = np.array([[2, 1], [0, 0]])
    assert (to_env_action(from_env_action(indices, spec), spec) == indices).all()
    spec = rssm.envs.EnvSpec({"obs": (3,)}, (2,), False, np.array([-2, 0], np.float32), np.array([2, 1], np.float32))
    values = np.array([[-2.0, 0.25], [1.0, 1.0]], np.float32)
    assert np.allclose(from_env_action(values, spec), [[-1, -0.5], [0.5, 1]])
    assert np.allclose(to_env_action(from_env_action(values, spec), spec), values)


@pytest.mark.parametrize("name", ["cartpole", "pendulum"])
def test_imagine_is_the_open_loop_prediction_in_the_env_s_terms(runs, name):
    """imagine(obs, actions between them, future actions) with a seed is the model's open-loop prediction (the
    model's own sequence layout, action[t] before obs[t]) under the same random numbers, vectors unsymlogged."""
    run = rssm.load(runs / name)
    obs, actions = real_episode(run, 7)
    context, horizon = 4, 4
    B = 2
    ctx_obs, ctx_actions = np.stack([obs[:context]] * B), np.stack([actions[:context - 1]] * B)
    future = np.stack([actions[context - 1:]] * B)  # (B, H, ...)
    got = run.world_model.imagine(ctx_obs, ctx_actions, future, seed=5)
    assert got.obs.shape == (B, horizon, *obs.shape[1:]) and got.obs.dtype == np.float32
    assert got.reward.shape == got.cont.shape == (B, horizon) and ((got.cont >= 0) & (got.cont <= 1)).all()
    assert (got.actions == future).all() if run.spec.discrete else np.allclose(got.actions, future, atol=1e-6)
    model_actions = from_env_action(np.concatenate([actions[:1], actions]), run.spec)  # (T, A), row 0 unused
    batch = {"obs": np.stack([obs] * B).astype(np.float32), "action": np.stack([model_actions] * B),
             "is_first": np.eye(1, len(obs), dtype=bool).repeat(B, 0)}
    torch.manual_seed(5)
    want = predict_open_loop(run.world_model.module, to_torch(batch, torch.device("cpu")), context, horizon)
    assert np.allclose(got.obs, symexp(want["obs"]["obs"]).numpy(), atol=1e-5)
    assert np.allclose(got.reward, want["reward"].numpy(), atol=1e-5)
    going_on = np.clip(want["cont"].numpy() / run.config.agent.gamma, 0, 1)  # today's DreamerV3: cont = gamma * P
    assert run.config.agent.contdisc and np.allclose(got.cont, going_on, atol=1e-6)
    again = run.world_model.imagine(ctx_obs, ctx_actions, future, seed=5)
    assert np.array_equal(again.obs, got.obs)  # the seed repeats it ...
    state = torch.get_rng_state()
    run.world_model.imagine(ctx_obs, ctx_actions, future, seed=6)
    assert torch.equal(torch.get_rng_state(), state)  # ... and leaves torch's random state alone


def test_imagine_with_a_policy(runs):
    run = rssm.load(runs / "cartpole")
    obs, actions = real_episode(run, 3)
    ctx = obs[None], actions[None]
    by_actor = run.world_model.imagine(*ctx, policy="actor", horizon=6, deterministic=True, seed=0)
    assert by_actor.actions.shape == (1, 6) and set(np.unique(by_actor.actions)) <= {0, 1}
    seen = []

    def pole_right(batch):  # a policy of the env's observations
        seen.append(batch.copy())
        return (batch[:, 2] > 0).astype(np.int64)

    by_rule = run.world_model.imagine(*ctx, policy=pole_right, horizon=5, seed=0)
    assert np.array_equal(seen[0], obs[None, -1])  # the last real observation first, then the predicted ones
    assert all(np.allclose(s, by_rule.obs[:, t], atol=1e-5) for t, s in enumerate(seen[1:]))
    assert np.array_equal(by_rule.actions, (np.stack(seen, 1)[..., 2] > 0).astype(np.int64))
    with pytest.raises(ValueError, match="either actions or a policy"):
        run.world_model.imagine(*ctx)
    with pytest.raises(ValueError, match="horizon"):
        run.world_model.imagine(*ctx, policy="actor")


@pytest.mark.parametrize("name,start", [("cartpole", "env"), ("cartpole", "replay"), ("pendulum", "env"),
                                        ("pixels", "replay")])
def test_dream_env_passes_gymnasium_s_checker(runs, name, start):
    env = rssm.DreamEnv(runs / name, start=start, context=3,
                        render_mode="rgb_array" if name == "pixels" else None)
    real = rssm.load(runs / name).make_env()
    assert env.observation_space == real.observation_space and env.action_space == real.action_space
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its advice on infinite bounds and on envs made without gym.make
        check_env(env)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    steps = [env.step(env.action_space.sample()) for _ in range(5)]
    assert all(env.observation_space.contains(s[0]) and isinstance(s[1], float) for s in steps)
    if name == "pixels":
        frame = env.render()
        assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame, steps[-1][0]["image"])


def test_a_seeded_dream_repeats(runs):
    env = rssm.DreamEnv(runs / "pendulum")

    def episode():
        first, _ = env.reset(seed=3)
        return [first] + [env.step(np.array([0.5], np.float32))[0] for _ in range(10)]

    a, b = episode(), episode()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[-1], env.reset(seed=4)[0])


def test_dream_episodes_end_by_the_continue_head_or_the_time_limit(runs):
    env = rssm.DreamEnv(runs / "cartpole", max_episode_steps=4)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(4)]
    terminated = any(t for t, _ in ends)
    assert terminated or ends[-1] == (False, True)
    assert rssm.DreamEnv(runs / "cartpole")._dreams.max_steps == 500  # CartPole-v1's limit, the run's
    assert rssm.DreamEnv(runs / "pendulum")._dreams.max_steps == 200


def test_dream_vec_env_steps_n_dreams_at_once_and_autoresets_the_next_step(runs):
    envs = rssm.DreamVecEnv(runs / "cartpole", 5, max_episode_steps=1)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (5, 4) and envs.single_observation_space.contains(obs[0])
    for _ in range(2):
        obs, reward, terminated, truncated, _ = envs.step(np.zeros(5, np.int64))
        assert (terminated ^ truncated).all()  # every episode ends after one step, by its continue head or limit
        obs, reward, terminated, truncated, _ = envs.step(np.ones(5, np.int64))
        assert (reward == 0).all() and not (terminated | truncated).any()  # the step after starts anew
    assert envs.observation_space.contains(obs)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    pixels = rssm.DreamVecEnv(runs / "pixels", 3, start="replay", context=2, render_mode="rgb_array")
    obs, _ = pixels.reset(seed=0)
    assert obs["image"].shape == (3, 16, 16, 3) and len(pixels.render()) == 3


def test_what_a_dream_cannot_do_is_one_clear_error(runs, tmp_path):
    with pytest.raises(UserError, match="needs a world model with image observations"):
        rssm.DreamEnv(runs / "cartpole", render_mode="rgb_array")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.pt", "config.yaml"):
        (bare / f).write_bytes((runs / "cartpole" / f).read_bytes())
    with pytest.raises(UserError, match="no replay chunks"):
        rssm.DreamEnv(bare, start="replay")


def test_ppo_from_stable_baselines3_trains_inside_a_dream(runs):
    sb3 = pytest.importorskip("stable_baselines3")
    env = rssm.DreamEnv(runs / "cartpole", max_episode_steps=50)
    model = sb3.PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16]})
    model.learn(2048)
    assert model.num_timesteps >= 2048
    real = rssm.load(runs / "cartpole").make_env()
    obs, _ = real.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert real.action_space.contains(int(action))


def test_a_pixel_run_imagines_and_acts_on_dict_observations(runs):
    run = rssm.load(runs / "pixels")
    env = run.make_env()
    first, _ = env.reset(seed=0)
    obs, actions = [first], [0, 1, 0]
    for action in actions:
        obs.append(env.step(action)[0])  # Dict observations: {"image": (16, 16, 3) uint8}
    context = {"image": np.stack([o["image"] for o in obs])[None]}  # (1, T, 16, 16, 3)
    actions = np.array(actions)
    dream = run.world_model.imagine(context, actions[None], np.zeros((1, 4), np.int64), seed=0)
    assert set(dream.obs) == {"image"} and dream.obs["image"].shape == (1, 4, 16, 16, 3)
    assert dream.obs["image"].dtype == np.uint8
    action, state = run.policy.predict(obs[-1])  # one Dict observation
    batch, _ = run.policy.predict({"image": context["image"][0]})  # a batch of T
    assert run.make_env().action_space.contains(action) and batch.shape == (len(obs),)


def test_dream_episodes_end_as_often_as_the_continue_head_says(runs):
    """termination="sample": each episode ends at a step with the probability 1 - cont that the continue head
    gives; "mode": exactly where cont < 1/2."""
    N = 4000
    for termination in ("sample", "mode"):
        envs = rssm.DreamVecEnv(runs / "cartpole", N, start="replay", context=2, termination=termination,
                                max_episode_steps=100)
        envs.reset(seed=0)
        _, _, terminated, _, _ = envs.step(np.zeros(N, np.int64))
        _, _, cont = envs._dreams.model.predict(envs._dreams.state)  # what the step's states say
        assert ((cont >= 0) & (cont <= 1)).all()
        if termination == "mode":
            assert np.array_equal(terminated, cont < 0.5)
        else:
            expected, spread = (1 - cont).sum(), np.sqrt((cont * (1 - cont)).sum())
            assert abs(terminated.sum() - expected) < 4 * spread + 1, (terminated.sum(), expected, spread)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    return short_debug_run(tmp_path_factory)


def test_a_run_shorter_than_a_replay_chunk_dreams_from_the_rows_its_checkpoint_holds(short_run):
    """experiment=debug (300 env steps) writes no chunk file (replay.chunk=1024): its replay is in its checkpoint,
    and the dreams start from it, whether the run is given by its directory or its checkpoint."""
    assert not list((short_run / "replay").glob("chunk_*.npz"))
    recorded = checkpoint_tail(short_run / "checkpoint.pt", 1024)[1]["obs"][:, 0]  # (rows, 4): one env
    for run in (short_run, short_run / "checkpoint.pt"):
        env = rssm.DreamEnv(run, start="replay", context=3)
        obs, _ = env.reset(seed=0)
        assert (recorded == obs).all(-1).any()  # the last of 3 recorded steps of an episode
        assert env.observation_space.contains(env.step(0)[0])
