"""A world model trained from recorded data: another run's replay, or a local Minari dataset (rssm/offline.py)."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rssm
from rssm.config import UserError
from rssm.offline import episode_rows, split
from rssm.training import train

OFFLINE = ["experiment=debug", "agent=world_model", "trainer.progress=false", "offline.holdout=0.3",
           "trainer.log_every=10", "trainer.openloop_every=10", "trainer.openloop_horizons=[1,5]"]


def test_episode_rows_pair_each_observation_with_the_step_that_led_to_it():
    spec = rssm.envs.EnvSpec({"obs": (2,)}, (3,), True)
    rows = episode_rows(spec, np.arange(8.0).reshape(4, 2), np.array([2, 0, 1]), np.array([1.0, 2.0, 3.0]),
                        np.array([False, False, True]))
    assert rows["obs"].shape == (4, 2) and list(rows["is_first"]) == [True, False, False, False]
    assert rows["action"].tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert rows["reward"].tolist() == [0, 1, 2, 3] and list(rows["is_terminal"]) == [False, False, False, True]


def test_split_holds_out_a_share_of_the_episodes_by_seed():
    episodes = [{"i": np.array([i])} for i in range(10)]
    train_eps, held = split(episodes, 0.2, seed=0)
    assert len(held) == 2 and len(train_eps) == 8
    assert sorted(int(e["i"][0]) for e in train_eps + held) == list(range(10))
    assert [e["i"][0] for e in split(episodes, 0.2, seed=0)[1]] == [e["i"][0] for e in held]
    with pytest.raises(UserError, match="at least 2 are needed"):
        split(episodes[:1], 0.5, 0)


def check_offline_run(run_dir, updates):
    report = json.loads((run_dir / "heldout.json").read_text())
    assert report["updates"] == updates and report["heldout_episodes"] >= 1
    assert set(report["errors"]) >= {"obs_error_h1", "obs_error_h5", "reward_error_h1", "cont_error_h5"}
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("heldout/obs_error_h1")] == list(range(10, updates + 1, 10))
    assert events.Scalars("heldout/obs_error_h1")[-1].value == pytest.approx(report["errors"]["obs_error_h1"])
    assert "loss/wm" in events.Tags()["scalars"]
    loaded = rssm.load(run_dir)  # loads and dreams like any other run
    dream = rssm.DreamEnv(loaded)
    obs, _ = dream.reset(seed=0)
    assert dream.observation_space.contains(dream.step(dream.action_space.sample())[0])


def test_a_world_model_trains_on_another_run_s_replay(runs, compose_config, tmp_path):
    cfg = compose_config("env=cartpole", *OFFLINE, f"offline.replay={runs / 'cartpole'}", "offline.updates=20")
    train(cfg, tmp_path / "offline")
    check_offline_run(tmp_path / "offline", 20)


def test_a_resumed_offline_run_ends_as_the_run_that_was_never_stopped(runs, compose_config, tmp_path, capsys):
    source = [f"offline.replay={runs / 'cartpole'}"]
    train(compose_config("env=cartpole", *OFFLINE, *source, "offline.updates=20"), tmp_path / "whole")
    train(compose_config("env=cartpole", *OFFLINE, *source, "offline.updates=10"), tmp_path / "parts")
    capsys.readouterr()
    train(compose_config("env=cartpole", *OFFLINE, *source, "offline.updates=20", f"resume={tmp_path / 'parts'}",
                         "allow_changes=[offline.updates]"), tmp_path / "parts")
    assert f"resumed from {tmp_path / 'parts' / 'checkpoint.pt'} at update 10" in capsys.readouterr().out
    with pytest.raises(UserError, match="config differs from the run's"):
        train(compose_config("env=cartpole", *OFFLINE, *source, "offline.updates=30", f"resume={tmp_path / 'parts'}"),
              tmp_path / "parts")
    whole, parts = (torch.load(tmp_path / d / "model.pt", weights_only=True)["world_model"] for d in ("whole", "parts"))
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


def make_minari_dataset(dataset_id: str, episodes: int):
    """A local Minari dataset of random CartPole episodes, made from whole-episode buffers."""
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer

    env = gym.make("CartPole-v1")
    env.action_space.seed(0)
    buffers = []
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        seen, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            actions.append(env.action_space.sample())
            obs, reward, terminated, truncated, _ = env.step(actions[-1])
            seen.append(obs), rewards.append(reward), terminations.append(terminated), truncations.append(truncated)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=i, seed=i, observations=np.array(seen), actions=np.array(actions),
                                     rewards=np.array(rewards), terminations=np.array(terminations),
                                     truncations=np.array(truncations), infos={}))
    with pytest.warns(UserWarning, match="eval_env"):
        minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env=env, algorithm_name="random",
                                           author="rssm", author_email="rssm@example.com",
                                           code_permalink="https://example.com/rssm", description="random policy")


def test_a_world_model_trains_on_a_minari_dataset(compose_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    make_minari_dataset("cartpole/random-v0", episodes=12)
    cfg = compose_config("env=cartpole", *OFFLINE, "offline.minari=cartpole/random-v0", "offline.updates=20")
    train(cfg, tmp_path / "offline")
    check_offline_run(tmp_path / "offline", 20)
    with pytest.raises(UserError, match="Minari dataset 'cartpole/random-v0' has observations .* pick the env"):
        train(compose_config("env=pendulum", *OFFLINE, "offline.minari=cartpole/random-v0"), tmp_path / "wrong")
    with pytest.raises(UserError, match="cannot load the Minari dataset 'nothing/here-v0'"):
        train(compose_config("env=cartpole", *OFFLINE, "offline.minari=nothing/here-v0"), tmp_path / "none")
    with pytest.raises(UserError, match="add agent=world_model"):
        train(compose_config("env=cartpole", "experiment=debug", "offline.minari=cartpole/random-v0"),
              tmp_path / "agent")
