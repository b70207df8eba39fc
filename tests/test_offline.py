"""A world model trained from recorded data: another run's replay, or a local Minari dataset (rssm/offline.py)."""

import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rssm
from rssm.checkpoint import load_checkpoint
from rssm.config import UserError
from rssm.envs import EnvSpec
from rssm.offline import episode_rows, heldout_counts, heldout_errors, replay_episodes, split
from rssm.openloop import baseline_errors, scored
from rssm.training import train
from rssm.world_model import WorldModel

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


# Three held-out sequences of 6 steps, 3 of context: 2-dim observations in symlog space (recorded as symexp of
# these), rewards, episode starts and the index of each step's episode. Sequence 1's episode ends after the first
# predicted step, sequence 2's context starts a new episode at step 1.
SEQ_OBS = [[[5, 0], [5, 0], [1, 0], [2, 1], [4, 1], [1, 1]],
           [[0, 0], [0, 0], [3, 0], [3, 0], [0, 0], [5, 0]],
           [[0, 0], [0, 0], [0, 2], [0, 0], [0, 0], [0, 2]]]
SEQ_REWARD = [[7, 1, 3, 2, 5, 0], [4, 6, 2, 8, 3, 1], [9, 9, 4, 5, 6, 7]]
SEQ_FIRST = [[1, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0]]
SEQ_EPISODE = [[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 2, 2], [3, 4, 4, 4, 4, 4]]
# By hand: the last context observation (step 2) against steps 3, 4, 5, squared and summed over the 2 dims ...
LAST_SEEN = [[1 + 1, 9 + 1, 0 + 1], [0, 9, 4], [4, 4, 0]]
# ... and the mean reward of the context's steps after its last episode start (steps 1, 2; none; step 2).
CONTEXT_MEAN = [[0, 3, 2], [8, 3, 1], [1, 2, 3]]  # |2 - r|, |0 - r|, |4 - r| for r of steps 3, 4, 5


def hand_batch(rows):
    n = len(rows)
    return {"obs": torch.tensor(np.expm1(np.array(SEQ_OBS, np.float32)[rows])),
            "reward": torch.tensor(SEQ_REWARD, dtype=torch.float32)[rows],
            "is_first": torch.tensor(SEQ_FIRST, dtype=torch.bool)[rows],
            "episode": torch.tensor(SEQ_EPISODE)[rows],
            "action": torch.zeros(n, 6, 2), "is_terminal": torch.zeros(n, 6, dtype=torch.bool)}


def tiny_world_model():
    torch.manual_seed(0)
    return WorldModel({"obs": (2,)}, action_dim=2, deter=16, units=12, layers=1, groups=3, classes=4, bins=31)


def test_the_baselines_by_hand():
    errors = baseline_errors(tiny_world_model(), hand_batch([0, 1, 2]), context=3, horizon=3)
    assert set(errors) == {"obs_error_last_seen", "reward_error_context_mean"}
    torch.testing.assert_close(errors["obs_error_last_seen"], torch.tensor(LAST_SEEN, dtype=torch.float32))
    torch.testing.assert_close(errors["reward_error_context_mean"], torch.tensor(CONTEXT_MEAN, dtype=torch.float32))
    assert scored(hand_batch([0, 1, 2])["is_first"], 3, 3).tolist() == [[True] * 3, [True, False, False], [True] * 3]


def test_heldout_errors_average_over_the_sequences_they_count():
    """Over two batches, each error is the mean over the sequences that count at each horizon (not the mean of the
    batches' means), and the counts are of those sequences and the episodes they predict."""
    cfg = OmegaConf.create({"seed": 0, "trainer": {"openloop_context": 3, "openloop_horizons": [1, 2, 3]}})
    agent = SimpleNamespace(wm=tiny_world_model(), device=torch.device("cpu"))
    sequences = [hand_batch([0, 1]), hand_batch([2])]
    errors = heldout_errors(cfg, agent, sequences)
    assert set(errors) == {"obs_error", "reward_error", "cont_error", "obs_error_last_seen",
                           "reward_error_context_mean"}
    np.testing.assert_allclose(errors["obs_error_last_seen"], [(2 + 0 + 4) / 3, (10 + 4) / 2, (1 + 0) / 2])
    np.testing.assert_allclose(errors["reward_error_context_mean"], [(0 + 8 + 1) / 3, (3 + 2) / 2, (2 + 3) / 2])
    assert heldout_counts(cfg, sequences) == ([3, 2, 2], [3, 2, 2])  # h1: episodes 0, 1, 4; then 0 and 4


def check_offline_run(run_dir, updates, horizons=(1, 5)):
    text = (run_dir / "heldout.json").read_text()
    report = json.loads(text)
    assert report["updates"] == updates and report["heldout_episodes"] >= 1
    records = report["horizons"]
    assert [r["horizon"] for r in records] == list(horizons)
    assert [text.index(f'"horizon": {k},') for k in horizons] == sorted(text.index(f'"horizon": {k},')
                                                                      for k in horizons)
    for r in records:
        assert list(r)[:3] == ["horizon", "sequences", "episodes"]
        assert set(r) >= {"obs_error", "obs_error_last_seen", "reward_error", "reward_error_context_mean",
                          "cont_error"}
        assert all(v is not None and v >= 0 for v in r.values())
        assert 0 < r["episodes"] <= min(r["sequences"], report["heldout_episodes"])
        assert r["sequences"] <= report["sequences_drawn"]
    for field in ("sequences", "episodes"):  # fewer held-out stretches are long enough at longer horizons
        assert [r[field] for r in records] == sorted((r[field] for r in records), reverse=True)
    assert set(report["baselines"]) == {"obs_error_last_seen", "reward_error_context_mean"}
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("heldout/obs_error_h1")] == list(range(10, updates + 1, 10))
    last = records[-1]
    for name in ("obs_error", "obs_error_last_seen"):
        tag = f"heldout/{name}_h{last['horizon']}"
        assert events.Scalars(tag)[-1].value == pytest.approx(last[name], rel=1e-5)
    assert "loss/wm" in events.Tags()["scalars"]
    loaded = rssm.load(run_dir)  # loads and dreams like any other run
    dream = rssm.DreamEnv(loaded)
    obs, _ = dream.reset(seed=0)
    assert dream.observation_space.contains(dream.step(dream.action_space.sample())[0])


def replay_rows(run_dir):
    """The rows of a run's replay, as its checkpoint counts them."""
    return load_checkpoint(run_dir / "checkpoint.pt")["replay"]["total"]


CARTPOLE = EnvSpec({"obs": (4,)}, (2,), True)


def test_a_world_model_trains_on_another_run_s_replay(runs, compose_config, tmp_path):
    source, rows = runs / "cartpole", replay_rows(runs / "cartpole")
    assert len(list((source / "replay").glob("chunk_*.npz"))) == rows // 64 > 0 and rows % 64 > 0
    episodes = replay_episodes(source, CARTPOLE)  # the chunk files of 64 rows, then the rows the checkpoint keeps
    assert sum(len(e["is_first"]) for e in episodes) == rows
    cfg = compose_config("env=cartpole", *OFFLINE, f"offline.replay={source}", "offline.updates=20")
    train(cfg, tmp_path / "offline")
    check_offline_run(tmp_path / "offline", 20)


def test_a_world_model_trains_on_a_run_shorter_than_a_replay_chunk(compose_config, tmp_path):
    """experiment=debug's 300 steps are fewer than replay.chunk=1024: the run wrote no chunk file, and its
    checkpoint keeps every row."""
    source = tmp_path / "short"
    train(compose_config("env=cartpole", "experiment=debug", "trainer.progress=false"), source)
    assert not list((source / "replay").glob("chunk_*.npz")) and replay_rows(source) > 300
    episodes = replay_episodes(source, CARTPOLE)
    assert sum(len(e["is_first"]) for e in episodes) == replay_rows(source)
    assert all(e["is_first"][0] and not e["is_first"][1:].any() for e in episodes)
    cfg = compose_config("env=cartpole", *OFFLINE, f"offline.replay={source}", "offline.updates=20",
                         "trainer.openloop_horizons=[1,5,10,15]")
    train(cfg, tmp_path / "offline")
    check_offline_run(tmp_path / "offline", 20, horizons=(1, 5, 10, 15))
    (source / "checkpoint.pt").unlink()  # nothing left to train on
    with pytest.raises(UserError, match=f"{source} holds no replay chunks .* and no checkpoint.pt with the rows"):
        replay_episodes(source, CARTPOLE)


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
