"""DeepMind Control Suite tasks through dm-control (the `dmc` extra): spaces, rewards, episode ends, seeding, the
camera DreamerV3 picks, errors, and a tiny training run."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import dm_env
import numpy as np
import pytest
from omegaconf import OmegaConf

from rssm.build import build_env, env_id
from rssm.cli import with_general_env
from rssm.config import UserError, config_changes, validate
from rssm.dmc import DMCEnv, camera_id, make_dmc_env, split_task

# The tasks of DreamerV3's published scores (scores/dmc_proprio-dreamerv3.json.gz and dmc_vision-dreamerv3.json.gz
# in danijar/dreamerv3 at e3f0224), without their `dmc_` prefix.
PROPRIO_TASKS = ["acrobot_swingup", "ball_in_cup_catch", "cartpole_balance", "cartpole_balance_sparse",
                 "cartpole_swingup", "cartpole_swingup_sparse", "cheetah_run", "finger_spin", "finger_turn_easy",
                 "finger_turn_hard", "hopper_hop", "hopper_stand", "pendulum_swingup", "reacher_easy",
                 "reacher_hard", "walker_run", "walker_stand", "walker_walk"]
VISION_TASKS = [*PROPRIO_TASKS, "quadruped_run", "quadruped_walk"]


@pytest.mark.parametrize("task", PROPRIO_TASKS)
def test_every_proprio_task_gives_float_vectors_and_rewards_in_0_1(task):
    env, spec = make_dmc_env(task)
    try:
        names = env.unwrapped._env.observation_spec()  # dm_control's own observation names and shapes
        obs, _ = env.reset(seed=0)
        steps = [env.step(env.action_space.sample()) for _ in range(3)]
    finally:
        env.close()
    assert spec.obs_shapes == {k: (int(np.prod(s.shape)),) for k, s in names.items()}  # a scalar is a 1-vector
    assert not spec.discrete and spec.action_dim == env.action_space.shape[0]
    for o in [obs, *(s[0] for s in steps)]:
        assert {k: (v.shape, v.dtype) for k, v in o.items()} == {k: (s, np.float32) for k, s in spec.obs_shapes.items()}
    assert all(0.0 <= s[1] <= 1.0 and s[2:4] == (False, False) for s in steps)


def test_walker_walk_observes_its_three_named_vectors():
    _, spec = make_dmc_env("walker_walk")
    assert spec.obs_shapes == {"orientations": (14,), "height": (1,), "velocity": (9,)}
    assert spec.action_dims == (6,) and (spec.low == -1).all() and (spec.high == 1).all()


@pytest.mark.parametrize("task", VISION_TASKS)
def test_every_vision_task_observes_a_64_x_64_rgb_image_alone(compose_config, skip_without_egl, task):
    skip_without_egl()
    env, spec = build_env(compose_config("env=dmc_vision", f"env.task={task}"))
    try:
        first, _ = env.reset(seed=0)
        obs, reward, *_ = env.step(env.action_space.sample())
    finally:
        env.close()
    assert spec.obs_shapes == {"image": (64, 64, 3)}
    for o in (first, obs):
        assert set(o) == {"image"} and o["image"].shape == (64, 64, 3) and o["image"].dtype == np.uint8
        assert o["image"].std() > 10  # a drawn scene, not a blank frame
    assert 0.0 <= reward <= 2.0  # two control steps of rewards in [0, 1]


def test_pixels_can_keep_the_vectors_be_gray_and_render_videos(skip_without_egl):
    skip_without_egl()
    env, spec = make_dmc_env("cartpole_swingup", pixels=True, image_size=16, keep_state=True, grayscale=True,
                             render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        frame = env.render()
    finally:
        env.close()
    assert spec.obs_shapes == {"image": (16, 16, 1), "position": (3,), "velocity": (2,)}
    assert obs["image"].dtype == np.uint8 and obs["position"].dtype == np.float32
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    assert env.metadata["render_fps"] == 100  # cartpole's control step is 0.01 s


def test_the_dmc_config_makes_1000_control_step_episodes_of_500_agent_steps(compose_config):
    env, _ = build_env(compose_config("env=dmc"))  # walker_walk, action repeat 2, time limit 500
    try:
        env.reset(seed=0)
        ends = [env.step(np.zeros(6))[2:4] for _ in range(500)]
        physics_time = env.unwrapped._env.physics.data.time
    finally:
        env.close()
    assert ends == [(False, False)] * 499 + [(False, True)]
    assert physics_time == pytest.approx(1000 * 0.025)  # walker's control step is 0.025 s


def test_without_a_time_limit_the_suite_ends_the_episode_after_1000_control_steps():
    env, _ = make_dmc_env("cartpole_balance", time_limit=0)
    try:
        env.reset(seed=0)
        ends = [env.step(np.zeros(1))[2:4] for _ in range(1000)]
    finally:
        env.close()
    assert ends.index((False, True)) == 999 and ends.count((False, False)) == 999


@pytest.mark.parametrize("last, ends", [(dm_env.termination, (True, False)), (dm_env.truncation, (False, True)),
                                        (dm_env.transition, (False, False))])
def test_only_a_discount_of_0_terminates(last, ends):
    env = DMCEnv("cartpole_swingup")
    try:
        obs, _ = env.reset(seed=0)
        raw = {"position": np.zeros(3), "velocity": np.zeros(2)}
        env._env.step = lambda action: last(0.25, raw)
        _, reward, terminated, truncated, _ = env.step(np.zeros(1))
    finally:
        env.close()
    assert (terminated, truncated) == ends and reward == 0.25


def test_a_seed_fixes_the_episode_and_another_seed_changes_it():
    first, _ = make_dmc_env("walker_walk")
    second, _ = make_dmc_env("walker_walk")
    try:
        a, _ = first.reset(seed=7)
        for _ in range(5):
            first.step(first.action_space.sample())
        again, _ = first.reset(seed=7)  # after steps, in the same env
        b, _ = second.reset(seed=7)  # in another env
        other, _ = second.reset(seed=8)
    finally:
        first.close()
        second.close()
    assert all(np.array_equal(a[k], again[k]) and np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["orientations"], other["orientations"])


def test_a_seed_and_the_actions_taken_give_the_same_observation():
    # What resuming an episode under way relies on (rssm/collector.py rebuilds it from its seed and actions).
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 6))
    ends = []
    for _ in range(2):
        env, _ = make_dmc_env("walker_walk", action_repeat=2)
        try:
            env.reset(seed=3)
            ends.append([env.step(action) for action in actions][-1])
        finally:
            env.close()
    (first, reward, *_), (second, again, *_) = ends
    assert all(np.array_equal(first[k], second[k]) for k in first) and reward == again


def test_camera_minus_1_is_dreamerv3s_choice():
    assert camera_id("quadruped") == 2 and camera_id("walker") == 0 and camera_id("cartpole") == 0
    assert camera_id("quadruped", 1) == 1 and camera_id("walker", 1) == 1  # a camera the user names is kept


def test_the_quadruped_frames_come_from_camera_2():
    env = DMCEnv("quadruped_walk", pixels=True, image_size=8)
    asked = []
    env._env.physics.render = lambda *size, camera_id: asked.append((size, camera_id)) or np.zeros((8, 8, 3), np.uint8)
    try:
        env.reset(seed=0)
        env.step(np.zeros(12))
    finally:
        env.close()
    assert asked == [((8, 8), 2), ((8, 8), 2)]


def test_dreamerv3s_cup_name_is_ball_in_cup():
    from dm_control import suite

    assert split_task("cup_catch", suite.ALL_TASKS) == split_task("ball_in_cup_catch", suite.ALL_TASKS)
    assert split_task("cup_catch", suite.ALL_TASKS) == ("ball_in_cup", "catch")


def test_a_wrong_task_is_one_user_error_listing_the_valid_ones(compose_config):
    with pytest.raises(UserError, match=r"^unknown DeepMind Control task 'walker_wlak' \(env.task\); valid tasks: "
                                        r"acrobot_swingup, .*walker_walk$") as info:
        build_env(compose_config("env=dmc", "env.task=walker_wlak"))
    assert "\n" not in str(info.value) and all(task in str(info.value) for task in VISION_TASKS)


def test_without_dm_control_a_task_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dm_control", None)  # `import dm_control` raises ImportError
    with pytest.raises(UserError, match=r"^DeepMind Control tasks \(env.task\) need the dm-control package: "
                                        r"pip install 'rssm\[dmc\]'$"):
        make_dmc_env("walker_walk")


def test_atari_options_with_a_task_are_refused(compose_config):
    with pytest.raises(UserError, match="env.game, env.sticky_actions and env.noop_max are Atari's"):
        validate(compose_config("env=dmc", "env.noop_max=30"))
    with pytest.raises(UserError, match="env.camera must be >= -1"):
        validate(compose_config("env=dmc", "env.camera=-2"))


def test_dmc_keys_absent_from_an_older_run_are_no_change(compose_config):
    saved = OmegaConf.to_container(compose_config(), resolve=True)
    del saved["env"]["task"], saved["env"]["camera"]
    assert config_changes(saved, compose_config()) == []
    assert env_id(compose_config("env=dmc", "env.task=cheetah_run")) == "dmc/cheetah_run"


def test_a_tiny_run_trains_on_a_task_named_alone(tmp_path, run_cli):
    # `env.task=...` without `env=` picks env=dmc (action repeat 2, 500 agent steps), as `env.id=...` picks env=gym.
    run_dir = tmp_path / "run"
    proc = run_cli("env.task=cartpole_swingup", "experiment=debug", "trainer.progress=false", "trainer.steps=150",
                   "trainer.eval_episodes=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rssm: dmc/cartpole_swingup on cpu" in proc.stdout
    assert "observations: position 3 float32 -> MLP, velocity 2 float32 -> MLP" in proc.stdout
    saved = OmegaConf.load(run_dir / "config.yaml").env
    assert (saved.task, saved.action_repeat, saved.time_limit) == ("cartpole_swingup", 2, 500)
    assert (run_dir / "model.pt").exists()


def test_a_wrong_task_on_the_command_line_is_one_line_and_status_2(tmp_path, run_cli):
    proc = run_cli("env=dmc", "env.task=walker_wlak", "experiment=debug", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("rssm-train: error: unknown DeepMind Control task 'walker_wlak'")
    assert "MuJoCo" not in proc.stdout  # dm_control's import logs are held back


def test_the_scores_script_averages_each_seed_in_bins_then_the_seeds(tmp_path):
    runs = [{"task": "dmc_a", "method": "dreamerv3", "seed": 0, "xs": [8002, 8004, 20000], "ys": [1.0, 3.0, 10.0]},
            {"task": "dmc_a", "method": "dreamerv3", "seed": 1, "xs": [9000, 16000], "ys": [6.0, 20.0]},
            {"task": "dmc_b", "method": "dreamerv3", "seed": 0, "xs": [10000], "ys": [5.0]}]
    with gzip.open(tmp_path / "s.json.gz", "wt") as f:
        json.dump(runs, f)
    script = Path(__file__).resolve().parents[1] / "scripts" / "dreamerv3_scores.py"
    proc = subprocess.run([sys.executable, script, tmp_path / "s.json.gz", "--tasks", "dmc_a", "--source", "here"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "# source: here; mean over seeds in bins of 10000 env steps (agent steps x action repeat)",
        "task,step,score", "dmc_a,10000,4.0", "dmc_a,20000,15.0"]  # (mean(1, 3) + 6) / 2; (10 + 20) / 2
    bad = subprocess.run([sys.executable, script, tmp_path / "s.json.gz", "--tasks", "dmc_c"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no task dmc_c" in bad.stderr


def test_a_task_on_the_command_line_implies_the_dmc_config():
    assert with_general_env(["env.task=cheetah_run", "seed=1"]) == ["env=dmc", "env.task=cheetah_run", "seed=1"]
    assert with_general_env(["env=dmc_vision", "env.task=cheetah_run"]) == ["env=dmc_vision", "env.task=cheetah_run"]
    assert with_general_env(["env.id=Pendulum-v1"]) == ["env=gym", "env.id=Pendulum-v1"]


def test_without_a_renderer_vectors_work_and_pixels_are_one_user_error(tmp_path, cli_environ):
    # MUJOCO_GL=disabled is what rssm picks on Linux where libEGL cannot be loaded; dm_control reads it at import.
    code = ("from rssm.dmc import make_dmc_env\n"
            "env, spec = make_dmc_env('walker_walk'); env.reset(seed=0); env.step(env.action_space.sample())\n"
            "print(sorted(spec.obs_shapes))\n"
            "make_dmc_env('walker_walk', pixels=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**cli_environ, "MUJOCO_GL": "disabled"})
    assert proc.stdout == "['height', 'orientations', 'velocity']\n"
    assert proc.stderr.strip().splitlines()[-1] == (
        "rssm.config.UserError: MuJoCo cannot render DeepMind Control frames here (MUJOCO_GL=disabled: RuntimeError: "
        "No OpenGL rendering backend is available.); on Linux it draws off-screen with EGL (libEGL.so.1)")
