import importlib.resources

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rssm.build import build_env, build_world_model
from rssm.collector import Collector, make_envs
from rssm.config import UserError, config_changes, validate
from rssm.envs import random_action

CONFIGS = importlib.resources.files("rssm.configs")
ENVS = sorted(p.name[:-5] for p in CONFIGS.joinpath("env").iterdir() if p.name.endswith(".yaml"))
MODELS = sorted(p.name[:-5] for p in CONFIGS.joinpath("model").iterdir() if p.name.endswith(".yaml"))
EXPERIMENTS = sorted(p.name[:-5] for p in CONFIGS.joinpath("experiment").iterdir() if p.name.endswith(".yaml"))


def test_config_groups_are_found():
    assert {"cartpole", "pendulum", "acrobot", "lunarlander", "halfcheetah", "hopper", "walker2d",
            "cartpole_pixels", "halfcheetah_pixels", "atari", "pong", "breakout"} <= set(ENVS)
    assert {"xxs", "xs", "s", "m", "l", "xl", "debug"} <= set(MODELS)
    assert "debug" in EXPERIMENTS


@pytest.mark.parametrize("env", ENVS)
def test_every_env_config_composes_and_builds_its_env(compose_config, skip_without_egl, env):
    cfg = compose_config(f"env={env}", "env.image_size=16")
    validate(cfg)
    if cfg.env.pixels and (cfg.env.task or "mujoco" in gym.spec(cfg.env.id).entry_point):  # DMC renders with MuJoCo
        skip_without_egl()
    gym_env, spec = build_env(cfg)
    try:
        collector = Collector(make_envs(lambda: gym_env, 1), spec, seed=0)
        first, _ = collector.step(random_action(spec, np.random.default_rng(0)))
        second, _ = collector.step(random_action(spec, np.random.default_rng(1)))
    finally:
        gym_env.close()
    assert first["is_first"][0] and not second["is_first"][0]
    assert set(spec.obs_shapes) <= set(second) and second["action"].shape == (1, spec.action_dim)


@pytest.mark.parametrize("algo", ["dreamerv3", "dreamerv3_cpu", "dreamerv3_2023"])
def test_every_env_config_leaves_the_agent_to_the_algo(compose_config, algo):
    """One agent for every env: an env config sets env keys, model size, train ratio, run length, evaluation and
    replay capacity, never the algorithm's settings."""
    base = compose_config(f"algo={algo}")
    switches = ("norm", "fan", "blocks", "dyn_layers", "prior_layers", "learned_initial", "head_layers", "twohot",
                "unimix", "bins", "mlp_layers", "post_joint_init")
    for env in ENVS:
        cfg = compose_config(f"algo={algo}", f"env={env}")
        for section in ("agent", "wm", "optim"):
            assert cfg[section] == base[section], (env, section)
        assert {k: cfg.model[k] for k in switches} == {k: base.model[k] for k in switches}, env
        assert (cfg.replay.batch_size, cfg.replay.batch_length) == (base.replay.batch_size, base.replay.batch_length)
        assert (cfg.replay.context, cfg.replay.online) == (base.replay.context, base.replay.online)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_config, experiment):
    validate(compose_config(f"experiment={experiment}"))


@pytest.mark.parametrize("algo", ["dreamerv3", "dreamerv3_2023"])
def test_every_model_preset_builds_and_grows(compose_config, algo):
    counts = {}
    for model in ["xxs", "xs", "s", "m", "l", "xl"]:
        cfg = compose_config(f"algo={algo}", f"model={model}")
        validate(cfg)
        with torch.device("meta"):  # shapes only: the large presets need no memory here
            wm = build_world_model(cfg, {"obs": (17,)}, action_dim=6)
        counts[model] = sum(p.numel() for p in wm.parameters())
    assert list(counts.values()) == sorted(counts.values())
    if algo == "dreamerv3_2023":
        assert 7.4e6 < counts["s"] < 7.6e6  # DreamerV3 2023's S world model on a 17-dim vector task


def test_debug_model_builds_on_cpu(compose_config):
    wm = build_world_model(compose_config("experiment=debug"), {"obs": (4,)}, action_dim=2)
    assert sum(p.numel() for p in wm.parameters()) < 100_000


def test_default_open_loop_keys_are_valid(compose_config):
    cfg = compose_config()
    validate(cfg)
    assert list(cfg.trainer.openloop_horizons) == [1, 5, 10, 15] and cfg.trainer.openloop_context == 5


def test_keys_that_change_nothing_learned_may_change_on_resume(compose_config):
    """Logging, evaluation and checkpoint intervals, threads and device change what is shown or where the run
    computes, not what it learns; a run saved before the open-loop keys existed resumes too."""
    saved = OmegaConf.to_container(compose_config(), resolve=True)
    del saved["trainer"]["openloop_every"], saved["trainer"]["openloop_context"]
    free = compose_config("trainer.openloop_horizons=[2,3]", "trainer.log_every=7", "trainer.eval_every=9",
                          "trainer.checkpoint_every=11", "trainer.eval_episodes=2", "threads=2", "device=cpu",
                          "trainer.progress=false")
    assert config_changes(saved, free) == []
    assert "threads: 0 -> 2" in config_changes(saved, free, everything=True)
    other = compose_config("trainer.openloop_every=9", "trainer.steps=7", "agent.gamma=0.9")
    assert config_changes(saved, other) == [f"agent.gamma: {saved['agent']['gamma']} -> 0.9",
                                            f"trainer.steps: {saved['trainer']['steps']} -> 7"]


@pytest.mark.parametrize("override, message", [
    ("model.deter=0", "model.deter must be > 0"),
    ("replay.batch_size=-1", "replay.batch_size must be > 0"),
    ("wm.free_bits=-1.0", "wm.free_bits must be >= 0"),
    ("device=tpu", "device must be"),
    ("+trainer.extra=1", "unknown config key 'trainer.extra'"),
    ("replay.chunk=0", "replay.chunk must be > 0"),
    ("trainer.checkpoint_every=-5", "trainer.checkpoint_every must be >= 0"),
    ("trainer.max_nonfinite=0", "trainer.max_nonfinite must be > 0"),
    ("allow_changes=[model.size]", "allow_changes names 'model.size', which is not a config key"),
    ("trainer.openloop_every=-1", "trainer.openloop_every must be >= 0"),
    ("trainer.openloop_context=0", "trainer.openloop_context must be > 0"),
    ("trainer.openloop_horizons=[]", r"trainer.openloop_horizons must be increasing and >= 1, got \[\]"),
    ("trainer.openloop_horizons=[0,5]", "trainer.openloop_horizons must be increasing and >= 1"),
    ("trainer.openloop_horizons=[5,5]", "trainer.openloop_horizons must be increasing and >= 1"),
    ("trainer.openloop_horizons=[10,5]", "trainer.openloop_horizons must be increasing and >= 1"),
    ("model.cnn_keys='im(age'", "model.cnn_keys is not a regular expression"),
    ("env.image_size=0", "env.image_size must be > 0"),
    ("model.cnn_depth=0", "model.cnn_depth must be > 0"),
    ("precision=fp8", "precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("compile=sometimes", "compile must be one of auto, true, false, got 'sometimes'"),
])
def test_validate_rejects_bad_values(compose_config, override, message):
    with pytest.raises(UserError, match=message):
        validate(compose_config(override))


@pytest.mark.parametrize("args, message", [
    (["trainer.steps=abc"], "could not be converted to Integer"),
    (["trainer.stepz=10"], "Key 'stepz' not in 'TrainerConfig'"),
    (["model=huge"], "Could not find 'model/huge'"),
    (["env.id=NoSuchEnv-v0"], "cannot make environment 'NoSuchEnv-v0'"),
    (["env.id=FrozenLake-v1"], "unsupported observation space"),
    (["model.units=0"], "model.units must be > 0"),
    (["-m", "seed=0,zero"], "could not be converted to Integer"),
    (["trainer.openloop_horizons=[15,5]"], "trainer.openloop_horizons must be increasing and >= 1, got [15, 5]"),
    (["trainer.openloop_context=-2"], "trainer.openloop_context must be > 0, got -2"),
    (["trainer.openloop_horizons=[1,x]"], "could not be converted to Integer"),
    (["env=cartpole_pixels", "env.image_size=84"], "image 'image' is 84 x 84: the side must be 4 to 7 times"),
    (["env=atari", "env.game=no_such_game"], "cannot make environment 'ALE/NoSuchGame-v5'"),
    (["env=pong", "env.image_size=84"], "image 'obs' is 84 x 84"),  # after an ALE was made: no banner
])
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, run_cli, args, message):
    proc = run_cli(*args, "experiment=debug", f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multi",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rssm-train: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
