import errno
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import rssm.checkpoint
from rssm.checkpoint import CHECKPOINT, load_checkpoint, restore_run, save_run
from rssm.config import UserError
from rssm.envs import Collector, make_env, random_action
from rssm.replay import Replay
from rssm.train import Progress, RunStopped, build_agent, train

DEBUG = ("experiment=debug", "trainer.progress=false")


def fill(replay: Replay, steps: int, seed: int = 0) -> None:
    env, spec = make_env("CartPole-v1")
    collector, rng = Collector(env, spec, seed), np.random.default_rng(seed)
    for _ in range(steps):
        replay.add(collector.step(random_action(spec, rng))[0])


def test_replay_reloads_from_chunks_and_tail(tmp_path):
    replay = Replay(capacity=40, seed=0, directory=tmp_path, chunk=16)
    fill(replay, 90)  # wraps twice; chunks 0..4 are written, 10 transitions in the tail
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"chunk_00000{i}.npz" for i in range(5)]
    state = replay.state_dict()
    assert len(state["tail"]["reward"]) == 90 - 5 * 16
    replay.prune(replay.total)  # chunks entirely older than the 40 kept transitions go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_000003.npz", "chunk_000004.npz"]
    (tmp_path / "chunk_000005.npz").write_bytes(b"written after the checkpoint")
    (tmp_path / "chunk_000005.npz.123.tmp").write_bytes(b"half")
    loaded = Replay(capacity=40, seed=7, directory=tmp_path, chunk=16)
    loaded.load_state_dict(state)
    assert (loaded.total, len(loaded), loaded.ptr) == (replay.total, len(replay), replay.ptr)
    for k, v in replay.data.items():
        np.testing.assert_array_equal(loaded.data[k], v)
    batch, loaded_batch = replay.sample(8, 5), loaded.sample(8, 5)  # the sampling RNG goes on where it was
    for k, v in batch.items():
        np.testing.assert_array_equal(loaded_batch[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_000003.npz", "chunk_000004.npz"]


@pytest.mark.parametrize("kind", ["world_model", "dreamer"])
def test_resume_is_bit_exact(compose_config, tmp_path, kind):
    """N + M updates straight equal N updates, checkpoint, load into fresh objects, M updates."""
    cfg = compose_config(*DEBUG, f"agent={kind}", "replay.capacity=64", "replay.chunk=16")
    n, m, device = 4, 4, torch.device("cpu")
    env, spec = make_env(cfg.env.id)

    def fresh(directory, seed=cfg.seed):
        torch.manual_seed(seed)
        replay = Replay(cfg.replay.capacity, seed, directory, cfg.replay.chunk)
        return build_agent(cfg, spec, device), replay, Collector(env, spec, seed), np.random.default_rng(seed)

    def updates(agent, replay, count):
        return [agent.update(replay.sample(4, 8))["loss/wm"].item() for _ in range(count)]

    reference, replay, *_ = fresh(tmp_path / "straight")
    fill(replay, 100)
    straight = updates(reference, replay, n + m)

    agent, replay, collector, rng = fresh(tmp_path / "split")
    fill(replay, 100)
    first = updates(agent, replay, n)
    save_run(tmp_path / CHECKPOINT, cfg, agent, replay, collector, Progress(updates=n), rng)
    agent, replay, collector, rng = fresh(tmp_path / "split", seed=123)  # other weights and RNG states
    progress = restore_run(tmp_path / CHECKPOINT, load_checkpoint(tmp_path / CHECKPOINT), agent, replay, collector,
                           rng)
    assert progress["updates"] == n
    assert first + updates(agent, replay, m) == straight
    assert_same_state(agent.state_dict(), reference.state_dict())


def assert_same_state(a, b, where=""):
    """Every tensor and number in two nested state dicts is identical."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}/{i}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where
