"""The public Python API refuses bad input before any computation, in one line: `rssm.load`, `Policy.predict`,
`EnvModel.imagine`, `DreamEnv` and `DreamVecEnv` (their construction and `step`).

The property tests draw shapes, dtypes, nan and inf, and actions outside the space: the only outcomes allowed are a
correct result or rssm's own one-line ValueError naming the argument, raised by rssm's code (never an error from
inside torch or numpy, and never a silent answer to input the space does not hold)."""

import traceback
import warnings
from pathlib import Path

import gymnasium as gym
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rssm
from rssm.checkpoint import FORMAT
from rssm.config import UserError, register_configs

RSSM_CODE = Path(rssm.__file__).resolve().parent
PROPERTY = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def checked_runs(tmp_path_factory):
    """Two finished tiny runs: cartpole (a Box observation, Discrete actions) and pendulum_pixels (Dict
    observations {image (16, 16, 3) uint8, state (3,)}, Box actions in [-2, 2])."""
    from rssm.training import train

    register_configs()
    root = tmp_path_factory.mktemp("checked_runs")
    setups = {"cartpole": ["env=cartpole"],
              "pendulum_pixels": ["env=pendulum", "env.pixels=true", "env.pixels_keep_state=true", "env.image_size=16"]}
    with initialize_config_module("rssm.configs", version_base=None):
        for name, overrides in setups.items():
            cfg = compose("config", overrides=[*overrides, "experiment=debug", "trainer.steps=110", "replay.chunk=64",
                                               "trainer.eval_episodes=1", "trainer.progress=false"])
            train(cfg, root / name)
    return root


@pytest.fixture(scope="session")
def loaded(checked_runs):
    return {name: rssm.load(checked_runs / name) for name in ("cartpole", "pendulum_pixels")}


def refusal(error: BaseException, *names: str, kind: type[Exception] = ValueError) -> str:
    """The message of `error`, asserting it is rssm's own refusal: a `kind` of one line, naming `names`, raised by
    rssm's code (not from inside torch or numpy)."""
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, message
    raised_in = Path(traceback.extract_tb(error.__traceback__)[-1].filename).resolve()
    assert raised_in.is_relative_to(RSSM_CODE), f"raised in {raised_in}: {message}"
    assert all(name in message for name in names), (names, message)
    return message


def refused(call, *names: str, error: type[Exception] = ValueError) -> str:
    """Call `call()`, which must be refused: rssm's one-line `error` naming `names`."""
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is asserted below, with the message
        call()
    return refusal(info.value, *names, kind=error)


def outcome(call, *names: str):
    """(result, None) or (None, message) where rssm refused the call; any other error fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's advice on casting, numpy's on overflow
            return call(), None
    except ValueError as e:
        return None, refusal(e, *names)


def real_episode(run, steps: int, seed: int = 0):
    """The first steps + 1 observations of an episode of the run's real env under random actions (stacked, per
    key for a Dict), and the actions between them."""
    env = run.make_env()
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    seen, taken = [obs], []
    for _ in range(steps):
        taken.append(env.action_space.sample())
        seen.append(env.step(taken[-1])[0])
    if isinstance(obs, dict):
        return {k: np.stack([o[k] for o in seen]) for k in obs}, np.stack(taken)
    return np.stack(seen), np.stack(taken)


# --- what the strategies draw ---

DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint8", "uint64", "bool", "complex64", "<U3", "object"]
SPECIAL = [0.0, 1.0, -1.0, 0.5, 1.5, 2.0, 2.5, -2.5, 255.0, 256.0, 1e30, np.nan, np.inf, -np.inf]


@st.composite
def arrays(draw, shapes):
    """Arrays of a shape from `shapes` and any of `DTYPES`, their values often near an edge: 0, 1, the bounds,
    nan, inf, a float64 too large for float32."""
    dtype, shape = np.dtype(draw(st.sampled_from(DTYPES))), draw(shapes)
    if dtype.kind == "O":
        elements = st.one_of(st.none(), st.text(max_size=2), st.integers(-3, 3), st.floats(-3, 3))
    elif dtype.kind == "f":
        special = [x for x in SPECIAL if dtype.itemsize == 8 or abs(x) < 1e4 or not np.isfinite(x)]
        elements = st.one_of(st.sampled_from(special), hnp.from_dtype(dtype))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.one_of(st.integers(max(info.min, -2), min(info.max, 3)), hnp.from_dtype(dtype))
    else:
        elements = hnp.from_dtype(dtype)
    return draw(hnp.arrays(dtype, shape, elements=elements))


def shapes(*near: tuple[int, ...]):
    """The shapes `near` (right and nearly right ones) or any small shape."""
    return st.one_of(st.sampled_from(near), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


def finite_real(a: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return a.dtype.kind in "iuf" and bool(np.isfinite(a.astype(np.float32)).all())


def leading(a: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The leading axes of `a` before `shape`, or None where `a` does not end in `shape`."""
    n = a.ndim - len(shape)
    return a.shape[:n] if n >= 0 and a.shape[n:] == shape else None


def discrete_ok(a: np.ndarray, n: int, lead: tuple[int, ...]) -> bool:
    """As `Discrete.contains` takes each action: an integer dtype that casts to its int64, in range."""
    integers = a.dtype.kind in "iu" and np.can_cast(a.dtype, np.int64)
    return integers and a.shape == lead and bool(((a >= 0) & (a < n)).all())


def box_ok(a: np.ndarray, space: gym.spaces.Box, lead: tuple[int, ...]) -> bool:
    if a.dtype.kind not in "biuf" or a.shape != (*lead, *space.shape):
        return False
    return bool(((a >= space.low) & (a <= space.high)).all())  # nan compares false: refused


# --- rssm.load ---

def test_load_refuses_an_unknown_device(checked_runs):
    message = refused(lambda: rssm.load(checked_runs / "cartpole", device="banana"), "device", "'banana'")
    assert "cpu" in message
    refused(lambda: rssm.load(checked_runs / "cartpole", device=3), "device", "3")


def test_load_refuses_an_empty_config_yaml(checked_runs, tmp_path):
    (tmp_path / "model.pt").write_bytes((checked_runs / "cartpole" / "model.pt").read_bytes())
    (tmp_path / "config.yaml").write_text("")
    refused(lambda: rssm.load(tmp_path), "config.yaml is empty", error=UserError)
    (tmp_path / "config.yaml").write_text("- a list\n")
    refused(lambda: rssm.load(tmp_path), "config.yaml", "list", error=UserError)


def test_load_refuses_a_checkpoint_whose_config_is_not_a_mapping(checked_runs, tmp_path):
    weights = torch.load(checked_runs / "cartpole" / "model.pt", weights_only=True)
    torch.save({"format": FORMAT, "config": "x", "agent": weights}, tmp_path / "checkpoint.pt")
    refused(lambda: rssm.load(tmp_path / "checkpoint.pt"), "checkpoint.pt", "config", "str", error=UserError)
    torch.save({"format": FORMAT, "config": {"env": 5}, "agent": weights}, tmp_path / "checkpoint.pt")
    refused(lambda: rssm.load(tmp_path), "checkpoint.pt", "config", error=UserError)
    torch.save({"format": FORMAT, "config": {}, "agent": weights}, tmp_path / "checkpoint.pt")
    refused(lambda: rssm.load(tmp_path), "config", "empty", error=UserError)


# --- Policy.predict ---

def test_predict_refuses_an_observation_of_the_wrong_shape(loaded):
    policy = loaded["cartpole"].policy
    message = refused(lambda: policy.predict(np.zeros(5)), "obs", "(5,)")
    assert "(4,)" in message
    refused(lambda: policy.predict(np.zeros((2, 3, 4))), "obs", "(2, 3, 4)")
    refused(lambda: policy.predict({"obs": np.zeros(4)}), "obs", "dict")


def test_predict_refuses_a_dict_key_of_the_wrong_shape_or_a_missing_one(loaded):
    policy, image = loaded["pendulum_pixels"].policy, np.zeros((16, 16, 3), np.uint8)
    message = refused(lambda: policy.predict({"image": image, "state": np.zeros(4)}), "obs['state']", "(4,)")
    assert "(3,)" in message
    message = refused(lambda: policy.predict({"image": image}), "obs", "'state'")
    assert "lacks" in message
    refused(lambda: policy.predict(np.zeros(3)), "obs", "dict")


def test_predict_refuses_batched_and_unbatched_keys_mixed(loaded):
    policy = loaded["pendulum_pixels"].policy
    obs = {"image": np.zeros((16, 16, 3), np.uint8), "state": np.zeros((2, 3))}
    refused(lambda: policy.predict(obs), "obs['image']", "obs['state']", "(2, 3)")


def test_predict_refuses_an_empty_batch(loaded):
    refused(lambda: loaded["cartpole"].policy.predict(np.zeros((0, 4))), "obs", "(0, 4)")


def test_predict_refuses_nan_and_inf_observations(loaded):
    policy = loaded["cartpole"].policy
    for bad in (np.nan, np.inf, -np.inf):
        refused(lambda bad=bad: policy.predict(np.array([0.0, bad, 0.0, 0.0])), "obs", "finite")
    refused(lambda: policy.predict(np.full(4, 1e300)), "obs", "finite")  # inf as float32
    pixels = loaded["pendulum_pixels"].policy
    image = np.zeros((16, 16, 3), np.uint8)
    refused(lambda: pixels.predict({"image": image, "state": np.array([0, np.nan, 0])}), "obs['state']", "finite")
    refused(lambda: pixels.predict({"image": image.astype(int) + 256, "state": np.zeros(3)}), "obs['image']", "256")
    refused(lambda: pixels.predict({"image": image.astype(np.float32), "state": np.zeros(3)}), "obs['image']",
            "float32")
    refused(lambda: policy.predict(np.array(["a", "b", "c", "d"])), "obs", "<U1")


def test_predict_refuses_a_state_of_another_batch_size(loaded):
    policy = loaded["cartpole"].policy
    _, state = policy.predict(np.zeros((3, 4)))
    refused(lambda: policy.predict(np.zeros((2, 4)), state), "state", "3", "2")
    refused(lambda: policy.predict(np.zeros(4), state), "state", "3", "1")
    refused(lambda: policy.predict(np.zeros(4), "state"), "state", "'state'")


def test_predict_refuses_an_episode_start_not_broadcastable_to_the_batch(loaded):
    policy = loaded["cartpole"].policy
    refused(lambda: policy.predict(np.zeros((2, 4)), None, [True, False, True]), "episode_start", "(3,)", "2")
    refused(lambda: policy.predict(np.zeros((2, 4)), None, "yes"), "episode_start", "'yes'")
    refused(lambda: policy.predict(np.zeros((2, 4)), None, [0.5, 1.0]), "episode_start", "0.5")


def test_predict_still_takes_what_an_env_gives(loaded):
    run = loaded["cartpole"]
    env = run.make_env()
    obs, _ = env.reset(seed=0)
    action, state = run.policy.predict(obs)
    assert env.action_space.contains(action)
    for batch in (np.stack([obs] * 3), np.stack([obs] * 3).astype(np.float64), [list(obs)] * 3):
        actions, state3 = run.policy.predict(batch, episode_start=[True, True, True])
        assert actions.shape == (3,) and all(env.action_space.contains(a) for a in actions)
    assert run.policy.predict(np.zeros(4, np.int64), state, episode_start=np.False_)[0] in (0, 1)
    assert run.policy.predict(np.stack([obs] * 3), state3, episode_start=np.array([1, 0, 0]))[0].shape == (3,)
    pixels = loaded["pendulum_pixels"]
    real = pixels.make_env()
    obs, _ = real.reset(seed=0)
    action, _ = pixels.policy.predict({**obs, "ignored": "a key the model does not see"})
    assert real.action_space.contains(action)
    batch = {k: np.stack([v] * 2) for k, v in obs.items()}
    actions, _ = pixels.policy.predict(batch, deterministic=False)
    assert actions.shape == (2, 1) and all(real.action_space.contains(a) for a in actions)


@PROPERTY
@given(obs=arrays(shapes((4,), (1, 4), (3, 4), (0, 4), (4, 1), (5,), (), (2, 3, 4))))
def test_predict_acts_on_observations_in_the_space_and_refuses_the_rest(loaded, obs):
    run = loaded["cartpole"]
    got, message = outcome(lambda: run.policy.predict(obs), "obs")
    lead = leading(obs, (4,))
    valid = lead in ((), *((n,) for n in range(1, 5))) and finite_real(obs)
    assert (got is not None) == valid, (obs, message)
    if got is not None:
        actions = np.asarray(got[0]).reshape(-1)
        space = run.make_env().action_space
        assert len(actions) == (lead[0] if lead else 1) and all(space.contains(a) for a in actions)


@PROPERTY
@given(image_lead=st.sampled_from([(), (2,), (0,), (1, 2)]), state=arrays(shapes((3,), (2, 3), (1, 3), (4,))),
       image_dtype=st.sampled_from(["uint8", "int64", "float32", "bool"]), fill=st.sampled_from([0, 255, 256, -1]))
def test_predict_acts_on_dict_observations_in_the_space_and_refuses_the_rest(loaded, image_lead, state, image_dtype,
                                                                           fill):
    run = loaded["pendulum_pixels"]
    with np.errstate(invalid="ignore", over="ignore"):
        image = np.full((*image_lead, 16, 16, 3), fill).astype(image_dtype)
    got, _ = outcome(lambda: run.policy.predict({"image": image, "state": state}), "obs")
    pixels = image.dtype.kind in "iu" and image.size > 0 and 0 <= image.min() <= image.max() <= 255
    image_ok = pixels and image_lead in ((), (2,))
    valid = image_ok and leading(state, (3,)) == image_lead and finite_real(state)
    assert (got is not None) == valid
    if got is not None:
        space = run.make_env().action_space
        assert all(space.contains(a) for a in np.asarray(got[0]).reshape(-1, 1))


# --- EnvModel.imagine ---

@pytest.fixture(scope="session")
def contexts(loaded):
    """Per run, B = 2 episodes' first 3 observations and the 2 actions between them."""
    out = {}
    for name, run in loaded.items():
        obs, actions = real_episode(run, 2)
        twice = {k: np.stack([v] * 2) for k, v in obs.items()} if isinstance(obs, dict) else np.stack([obs] * 2)
        out[name] = twice, np.stack([actions] * 2)
    return out


def test_imagine_refuses_a_batch_mismatch_and_no_horizon(loaded, contexts):
    model, (obs, actions) = loaded["cartpole"].world_model, contexts["cartpole"]
    refused(lambda: model.imagine(obs, actions, np.zeros((3, 4), np.int64)), "actions", "(3, 4)", "(2, H)")
    refused(lambda: model.imagine(obs, actions[:1], np.zeros((2, 4), np.int64)), "context_actions", "(1, 2)", "(2, 2)")
    refused(lambda: model.imagine(obs, actions, np.zeros((2, 0), np.int64)), "actions", "(2, 0)")
    refused(lambda: model.imagine(obs, actions, policy="actor", horizon=0), "horizon", "0")
    refused(lambda: model.imagine(obs, actions, policy="actor", horizon=2.5), "horizon", "2.5")
    refused(lambda: model.imagine(obs, actions, np.zeros((2, 4), np.int64), horizon=3), "horizon", "3", "4")
    refused(lambda: model.imagine(obs[:0], actions[:0], np.zeros((0, 4), np.int64)), "context_obs", "(0, 3, 4)")
    refused(lambda: model.imagine(obs[:, :, :3], actions, np.zeros((2, 4), np.int64)), "context_obs", "(2, 3, 3)")


def test_imagine_refuses_a_policy_it_does_not_know(loaded, contexts):
    model, (obs, actions) = loaded["cartpole"].world_model, contexts["cartpole"]
    for policy in ("random", 5, np.zeros(2)):
        refused(lambda policy=policy: model.imagine(obs, actions, policy=policy, horizon=3), "policy", "actor")
    message = refused(lambda: model.imagine(obs, actions, policy=lambda o: np.full(len(o), 2), horizon=3), "policy",
                      "2")
    assert "[0, 2)" in message
    refused(lambda: model.imagine(obs, actions), "actions", "policy")


def test_imagine_refuses_actions_outside_the_space(loaded, contexts):
    model, (obs, actions) = loaded["cartpole"].world_model, contexts["cartpole"]
    refused(lambda: model.imagine(obs, actions, np.full((2, 3), -1)), "actions", "-1")
    refused(lambda: model.imagine(obs, actions, np.full((2, 3), 1.5)), "actions", "float64")
    refused(lambda: model.imagine(obs, actions, np.full((2, 3), 5)), "actions", "5")
    refused(lambda: model.imagine(obs, actions + 2, np.zeros((2, 3), np.int64)), "context_actions", "2")
    model, (obs, actions) = loaded["pendulum_pixels"].world_model, contexts["pendulum_pixels"]
    refused(lambda: model.imagine(obs, actions, np.full((2, 3, 1), 2.5)), "actions", "2.5", "-2")
    refused(lambda: model.imagine(obs, actions, np.full((2, 3, 1), np.nan)), "actions", "nan")
    refused(lambda: model.imagine(obs, actions, np.zeros((2, 3))), "actions", "(2, 3)", "(2, H, 1)")


def test_imagine_still_takes_numpy_and_list_actions(loaded, contexts):
    model, (obs, actions) = loaded["cartpole"].world_model, contexts["cartpole"]
    for future in (np.ones((2, 3), np.int32), [[0, 1, 1], [1, 0, 0]], np.zeros((2, 3), np.uint8)):
        got = model.imagine(obs, actions.astype(np.int8), future, seed=0)
        assert got.obs.shape == (2, 3, 4) and np.array_equal(got.actions, np.asarray(future))
    got = model.imagine(obs, actions, policy=lambda o: (o[:, 2] > 0).astype(np.int32), horizon=np.int64(2))
    assert got.actions.shape == (2, 2)
    model, (obs, actions) = loaded["pendulum_pixels"].world_model, contexts["pendulum_pixels"]
    got = model.imagine(obs, actions.astype(np.float64), np.full((2, 3, 1), -2.0), seed=0)
    assert got.obs["image"].shape == (2, 3, 16, 16, 3) and np.allclose(got.actions, -2.0)


@PROPERTY
@pytest.mark.parametrize("name", ["cartpole", "pendulum_pixels"])
@given(future=arrays(shapes((2, 3), (2, 1), (2, 0), (3, 3), (2,), (2, 3, 1), (2, 1, 1), (2, 3, 2), ())))
def test_imagine_takes_actions_in_the_space_and_refuses_the_rest(loaded, contexts, name, future):
    model, (obs, actions) = loaded[name].world_model, contexts[name]
    got, _ = outcome(lambda: model.imagine(obs, actions, future, seed=0), "actions")
    space = loaded[name].make_env().action_space
    lead = (2, future.shape[1]) if future.ndim >= 2 and future.shape[0] == 2 and future.shape[1] >= 1 else None
    if isinstance(space, gym.spaces.Discrete):
        valid = lead is not None and discrete_ok(future, space.n, lead)
    else:
        valid = lead is not None and box_ok(future, space, lead)
    assert (got is not None) == valid
    if got is not None:
        assert got.reward.shape == got.cont.shape == lead and np.isfinite(got.reward).all()


@PROPERTY
@given(context=arrays(shapes((2, 3, 4), (2, 3, 5), (2, 2, 4), (1, 3, 4), (0, 3, 4), (3, 4), (2, 3, 4, 1))))
def test_imagine_takes_context_observations_in_the_space_and_refuses_the_rest(loaded, contexts, context):
    model, (_, actions) = loaded["cartpole"].world_model, contexts["cartpole"]
    got, _ = outcome(lambda: model.imagine(context, actions, np.zeros((2, 1), np.int64)), "context_")  # _obs, _actions
    assert (got is not None) == (context.shape == (2, 3, 4) and finite_real(context))


# --- DreamEnv, DreamVecEnv ---

def test_dream_envs_refuse_what_they_cannot_be_made_of(loaded):
    run = loaded["cartpole"]
    refused(lambda: rssm.DreamEnv(run, start="replay", context=0), "context", "0")
    refused(lambda: rssm.DreamEnv(run, start="replay", pool=0), "pool", "0")
    refused(lambda: rssm.DreamEnv(run, max_episode_steps=-3), "max_episode_steps", "-3")
    refused(lambda: rssm.DreamEnv(run, start=["env"]), "start", "['env']")
    refused(lambda: rssm.DreamEnv(run, render_mode="human"), "render_mode", "'human'")
    for num in (0, -1, 2.5, True, "2"):
        refused(lambda num=num: rssm.DreamVecEnv(run, num), "num_envs", repr(num))


def test_dream_env_step_refuses_actions_outside_the_space(loaded):
    env = rssm.DreamEnv(loaded["cartpole"])
    env.reset(seed=0)
    for action, given_as in ((-1, "-1"), (1.5, "1.5"), (5, "5"), (np.int64(2), "2"), ("a", "'a'"), (None, "None"),
                             ([0, 1], "[0, 1]"), (np.array([1]), "(1,)"), (np.True_, "bool"),
                             (np.uint64(1), "uint64")):
        assert not env.action_space.contains(action)
        refused(lambda action=action: env.step(action), "action", given_as)
    env = rssm.DreamEnv(loaded["pendulum_pixels"])
    env.reset(seed=0)
    for action, given_as in ((np.array([3.0], np.float32), "3.0"), (np.array([np.nan]), "nan"),
                             (np.array([0.5, 0.5]), "(2,)"), (0.5, "0.5"), (np.array([[0.5]]), "(1, 1)")):
        message = refused(lambda action=action: env.step(action), "action", given_as)
        assert "(1,)" in message or "[-2.0] to [2.0]" in message


def test_dream_vec_env_step_refuses_the_wrong_number_of_actions_and_actions_outside_the_space(loaded):
    envs = rssm.DreamVecEnv(loaded["cartpole"], 3)
    envs.reset(seed=0)
    refused(lambda: envs.step(np.zeros(2, np.int64)), "actions", "(2,)", "(3,)")
    refused(lambda: envs.step(np.array([0, -1, 1])), "actions", "-1")
    refused(lambda: envs.step(np.ones(3)), "actions", "float64")
    refused(lambda: envs.step(0), "actions", "(3,)")


def test_dream_envs_still_take_numpy_ints_and_lists(loaded):
    env = rssm.DreamEnv(loaded["cartpole"])
    env.reset(seed=0)
    for action in (0, 1, True, np.int8(1), np.uint32(0), np.array(1), np.int64(1)):
        assert env.action_space.contains(action)
        assert env.observation_space.contains(env.step(action)[0])
    envs = rssm.DreamVecEnv(loaded["cartpole"], 3)
    envs.reset(seed=0)
    for actions in ([0, 1, 1], np.ones(3, np.int32), envs.action_space.sample()):
        assert envs.observation_space.contains(envs.step(actions)[0])
    env = rssm.DreamEnv(loaded["pendulum_pixels"])
    env.reset(seed=0)
    for action in (np.array([2.0], np.float32), np.array([-2.0]), [0.5], np.array([1], np.int64)):
        assert env.observation_space.contains(env.step(action)[0])


def step_action():
    """What a user may pass to a single env's step: Python numbers, numpy scalars, arrays, strings, None, lists."""
    numpy_scalar = arrays(st.just(())).map(lambda a: a[()])
    return st.one_of(st.integers(-2, 3), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=2),
                     st.lists(st.integers(0, 1), max_size=2), numpy_scalar, arrays(shapes((), (1,), (2,), (1, 1))))


@PROPERTY
@pytest.mark.parametrize("name", ["cartpole", "pendulum_pixels"])
@given(action=step_action())
def test_dream_env_steps_with_actions_in_the_space_and_refuses_the_rest(loaded, name, action):
    env = rssm.DreamEnv(loaded[name], max_episode_steps=10**6)
    env.reset(seed=0)
    got, _ = outcome(lambda: env.step(action), "action")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(env.action_space, gym.spaces.Discrete):
            valid = env.action_space.contains(action)
        else:
            try:
                valid = box_ok(np.asarray(action), env.action_space, ())
            except (ValueError, TypeError):
                valid = False
    assert (got is not None) == valid
    if got is not None:
        assert env.observation_space.contains(got[0]) and isinstance(got[1], float)


@PROPERTY
@given(actions=arrays(shapes((3,), (2,), (4,), (3, 1), ())))
def test_dream_vec_env_steps_with_actions_in_the_space_and_refuses_the_rest(loaded, actions):
    envs = rssm.DreamVecEnv(loaded["cartpole"], 3, max_episode_steps=10**6)
    envs.reset(seed=0)
    got, _ = outcome(lambda: envs.step(actions), "actions")
    assert (got is not None) == discrete_ok(actions, 2, (3,))
    if got is not None:
        assert envs.observation_space.contains(got[0]) and got[1].shape == (3,)
