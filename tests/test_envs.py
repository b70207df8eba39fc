"""Atari through ale-py (the Atari100k protocol), grayscale pixels for any env, and MuJoCo rendered off-screen."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from rssm.build import build_env, build_world_model, env_id
from rssm.collector import Collector, make_envs
from rssm.config import UserError, config_changes, validate
from rssm.envs import atari_id, make_env, random_action
from rssm.evaluate import main as eval_main
from rssm.training import train


def ale(env: gym.Env):
    return env.unwrapped.ale


@pytest.mark.parametrize("game, ale_id", [("pong", "ALE/Pong-v5"), ("ms_pacman", "ALE/MsPacman-v5"),
                                          ("space_invaders", "ALE/SpaceInvaders-v5"), ("Breakout", "ALE/Breakout-v5")])
def test_game_names_map_to_ale_ids(game, ale_id):
    assert atari_id(game) == ale_id


def test_env_configs_name_their_game(compose_config):
    assert env_id(compose_config("env=pong")) == "ALE/Pong-v5"
    assert env_id(compose_config("env=breakout")) == "ALE/Breakout-v5"
    assert env_id(compose_config("env=pong", "env.game=breakout")) == "ALE/Breakout-v5"
    assert env_id(compose_config("env=atari", "env.game=ms_pacman")) == "ALE/MsPacman-v5"
    assert env_id(compose_config("env=cartpole")) == "CartPole-v1"


def test_pong_follows_the_atari100k_protocol(compose_config):
    cfg = compose_config("env=pong", "model=debug")
    validate(cfg)
    env, spec = build_env(cfg)
    try:
        assert spec.obs_shapes == {"obs": (64, 64, 3)} and spec.discrete and spec.action_dims == (6,)
        assert ale(env).getFloat("repeat_action_probability") == pytest.approx(0.25)  # sticky actions
        assert env.spec.max_episode_steps == 108_000  # frames: 27,000 agent steps
        collector, rng = Collector(make_envs(lambda: env, 1), spec, seed=0), np.random.default_rng(0)
        first, _ = collector.step(random_action(spec, rng))
        assert ale(env).getEpisodeFrameNumber() == 0  # no no-op frames after the reset
        frames = []
        for _ in range(3):
            step, _ = collector.step(random_action(spec, rng))
            frames.append(ale(env).getEpisodeFrameNumber())
    finally:
        env.close()
    assert frames == [4, 8, 12]  # 4 frames per agent step
    assert first["obs"].dtype == np.uint8 and first["obs"].shape == (1, 64, 64, 3) and first["obs"].std() > 0
    assert step["obs"].dtype == np.uint8 and step["action"].shape == (1, 6)
    wm = build_world_model(cfg, spec.obs_shapes, spec.action_dim)
    assert wm.image_keys == ["obs"] and wm.encoder is None  # the frames go to the CNN


def test_a_tiny_pong_run_models_the_frames_with_the_cnn(compose_config, tmp_path, capsys):
    cfg = compose_config("experiment=debug", "env=pong", "env.image_size=16", "env.time_limit=60",
                         "trainer.steps=140", "trainer.progress=false", "trainer.openloop_every=0",
                         "trainer.eval_episodes=1")
    train(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "rssm: ALE/Pong-v5 on cpu" in out and "observations: obs 16x16x3 uint8 -> CNN;" in out
    eval_main([str(tmp_path), "--episodes", "1", "--out", str(tmp_path / "eval.json")])
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["env"] == "ALE/Pong-v5" and result["episodes"] == 1


def test_grayscale_atari_frames_have_one_channel(compose_config):
    env, spec = build_env(compose_config("env=breakout", "env.grayscale=true"))
    try:
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(1)  # FIRE
    finally:
        env.close()
    assert spec.obs_shapes == {"obs": (64, 64, 1)} and spec.action_dims == (4,)
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 1) and obs.std() > 0


def test_atari_time_limit_counts_agent_steps():
    env, _ = make_env("ALE/Pong-v5", time_limit=10, image_size=16)
    env.reset(seed=0)
    ends = [env.step(0)[3] for _ in range(10)]
    env.close()
    assert ends == [False] * 9 + [True]


def test_an_unknown_game_is_one_user_error(compose_config):
    with pytest.raises(UserError, match=r"^cannot make environment 'ALE/NoSuchGame-v5': .*NoSuchGame") as info:
        build_env(compose_config("env=atari", "env.game=no_such_game"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"env_id": "ALE/Pong-v5", "pixels": True}, "Atari envs are observed as images already"),
    ({"env_id": "CartPole-v1", "grayscale": True}, "env.grayscale needs env.pixels or an Atari id"),
    ({"env_id": "CartPole-v1", "sticky_actions": 0.25}, "apply to Atari ids"),
    ({"env_id": "Pendulum-v1", "noop_max": 30}, "apply to Atari ids"),
])
def test_options_that_do_not_apply_to_the_env_are_refused(kwargs, words):
    with pytest.raises(UserError, match=words):
        make_env(**kwargs)


@pytest.mark.parametrize("override, message", [
    ("env.sticky_actions=1.5", r"env.sticky_actions must be in \[0, 1\]"),
    ("env.noop_max=-1", "env.noop_max must be >= 0"),
    ("env.game='ms pacman'", "env.game must be a game name"),
])
def test_validate_rejects_bad_atari_values(compose_config, override, message):
    with pytest.raises(UserError, match=message):
        validate(compose_config(override))


def test_atari_keys_absent_from_an_older_run_are_no_change(compose_config):
    saved = OmegaConf.to_container(compose_config(), resolve=True)
    for key in ("grayscale", "game", "sticky_actions", "noop_max"):
        del saved["env"][key]
    assert config_changes(saved, compose_config()) == []


def test_any_pixel_env_can_be_grayscale_with_repeat_and_time_limit():
    rgb_env, _ = make_env("CartPole-v1", pixels=True, image_size=16)
    env, spec = make_env("CartPole-v1", pixels=True, grayscale=True, image_size=16, action_repeat=2, time_limit=3)
    try:
        rgb, _ = rgb_env.reset(seed=0)
        gray, _ = env.reset(seed=0)
        ends = [env.step(0)[3] for _ in range(3)]  # action 0 leaves the pole up for more than 6 env steps
    finally:
        env.close()
        rgb_env.close()
    assert spec.obs_shapes == {"image": (16, 16, 1)}
    assert gray["image"].dtype == np.uint8 and gray["image"].shape == (16, 16, 1)
    luma = np.asarray(Image.fromarray(rgb["image"]).convert("L"), np.int16)  # (16, 16)
    assert np.abs(gray["image"][..., 0].astype(np.int16) - luma).max() <= 2  # the same scene, in gray
    assert gray["image"].min() < 200 < gray["image"].max()  # cart and pole on white
    assert ends == [False, False, True]


def body_pixels(image: np.ndarray) -> int:
    """Pixels of the MuJoCo robots' tan bodies (rgba 0.8 0.6 0.4): reddish, unlike the floor and the sky."""
    r, g, b = np.moveaxis(image.astype(np.int16), -1, 0)
    return int(((r > g + 30) & (r > b + 60)).sum())


def test_mujoco_pixels_render_off_screen_and_follow_the_robot(compose_config, monkeypatch, skip_without_egl):
    skip_without_egl()
    monkeypatch.setenv("MUJOCO_GL", "")
    monkeypatch.delenv("MUJOCO_GL")  # as on a fresh shell; restored after the test
    env, spec = build_env(compose_config("env=halfcheetah_pixels"))
    try:
        assert os.environ["MUJOCO_GL"] == "egl"
        obs, _ = env.reset(seed=0)
        first = obs["image"]
        sim = env.unwrapped
        for _ in range(15):  # run forward at 8 m/s: 12 m in 30 env steps, far out of the starting view
            velocity = sim.data.qvel.copy()
            velocity[0] = 8.0
            sim.set_state(sim.data.qpos.copy(), velocity)
            obs, *_ = env.step(np.zeros(6, np.float32))
        distance = sim.data.qpos[0]
    finally:
        env.close()
    assert spec.obs_shapes == {"image": (64, 64, 3)} and not spec.discrete and spec.action_dims == (6,)
    assert first.dtype == np.uint8 and first.std() > 10  # a scene, not a blank frame
    assert distance > 8 and body_pixels(first) > 10 and body_pixels(obs["image"]) > 10  # the camera followed


def test_a_mujoco_gl_set_by_the_user_wins(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    env, _ = make_env("HalfCheetah-v5", pixels=True, image_size=16)  # nothing rendered before a reset
    env.close()
    assert os.environ["MUJOCO_GL"] == "osmesa"


def test_an_env_whose_package_is_missing_names_the_extra_that_installs_it():
    """Box2D, ale-py and MuJoCo hidden from a fresh interpreter: each env says `pip install 'rssm[...]'` in one line."""
    code = """
import sys
for name in ("Box2D", "ale_py", "mujoco"):
    sys.modules[name] = None  # an import of it fails, as where it is not installed
from rssm.config import UserError
from rssm.envs import make_env
for env_id in ("LunarLander-v3", "ALE/Pong-v5", "HalfCheetah-v5"):
    try:
        make_env(env_id)
    except UserError as e:
        print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 3, out
    for line, extra in zip(lines, ("box2d", "atari", "mujoco"), strict=True):
        assert line.endswith(f"pip install 'rssm[{extra}]'"), line
