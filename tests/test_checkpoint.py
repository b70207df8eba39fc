import errno
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import rssm.checkpoint
from rssm.build import build_agent
from rssm.checkpoint import CHECKPOINT, load_checkpoint, restore_run, save_run
from rssm.collector import Collector, make_envs
from rssm.config import UserError
from rssm.envs import make_env, random_action
from rssm.replay import Replay
from rssm.training import Progress, RunStopped, train

DEBUG = ("experiment=debug", "trainer.progress=false")


def fill(replay: Replay, steps: int, seed: int = 0) -> None:
    env, spec = make_env("CartPole-v1")
    collector, rng = Collector(make_envs(lambda: env, 1), spec, seed), np.random.default_rng(seed)
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


def test_replay_files_without_an_env_axis_still_load(tmp_path):
    replay = Replay(capacity=40, seed=0, directory=tmp_path, chunk=16)
    fill(replay, 40)
    for path in tmp_path.iterdir():  # rewrite the chunks as (n, ...), the layout before the env axis
        with np.load(path) as chunk:
            arrays = {k: chunk[k][:, 0] for k in chunk.files}
        np.savez(path, **arrays)
    state = replay.state_dict()
    state["tail"] = {k: v[:, 0] for k, v in state["tail"].items()}
    loaded = Replay(capacity=40, seed=0, directory=tmp_path, chunk=16)
    loaded.load_state_dict(state)
    for k, v in replay.data.items():
        np.testing.assert_array_equal(loaded.data[k], v)


@pytest.mark.parametrize("kind", ["world_model", "dreamer"])
def test_resume_is_bit_exact(compose_config, tmp_path, kind):
    """N + M updates straight equal N updates, checkpoint, load into fresh objects, M updates."""
    cfg = compose_config(*DEBUG, f"agent={kind}", "replay.capacity=64", "replay.chunk=16")
    n, m, device = 4, 4, torch.device("cpu")
    env, spec = make_env(cfg.env.id)

    def fresh(directory, seed=cfg.seed):
        torch.manual_seed(seed)
        replay = Replay(cfg.replay.capacity, seed, directory, cfg.replay.chunk)
        collector = Collector(make_envs(lambda: env, 1), spec, seed)
        return build_agent(cfg, spec, device), replay, collector, np.random.default_rng(seed)

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


def test_full_disk_keeps_the_previous_checkpoint(compose_config, tmp_path, monkeypatch):
    cfg = compose_config(*DEBUG, "agent=world_model", "trainer.steps=200", "trainer.checkpoint_every=100")
    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f)
        f.write(b"part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rssm.checkpoint.torch, "save", save_then_fill_the_disk)
    with pytest.raises(UserError, match="No space left on device.*previous file, if any, is intact"):
        train(cfg, tmp_path)
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    with pytest.raises(UserError, match="already holds a run: continue it with rssm-train resume="):
        train(cfg, tmp_path)  # a new run never overwrites an old one


@pytest.mark.parametrize("damage", ["truncated", "garbage", "code"])
def test_damaged_or_unsafe_checkpoints_are_refused(tmp_path, damage):
    path = tmp_path / CHECKPOINT
    if damage == "code":  # a pickle that would call a function when loaded without weights_only
        torch.save({"format": 1, "payload": subprocess.CompletedProcess(["true"], 0)}, path)
    else:
        torch.save({"format": 1, "weights": torch.zeros(1000)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" + data[8:])
    with pytest.raises(UserError, match=f"cannot load checkpoint {path}: "):
        load_checkpoint(path)


def test_non_finite_updates_are_skipped_then_stop_the_run(compose_config, tmp_path, monkeypatch):
    from rssm.world_model import WorldModel

    real_loss = WorldModel.loss

    def nan_loss(self, data, scales, state=None):
        loss, metrics, post = real_loss(self, data, scales, state)
        return loss * float("nan"), metrics, post

    cfg = compose_config(*DEBUG, "agent=world_model", "trainer.checkpoint_every=50", "trainer.max_nonfinite=5")
    monkeypatch.setattr(WorldModel, "loss", nan_loss)
    with pytest.raises(RunStopped, match="5 updates in a row had a non-finite loss or gradient") as stopped:
        train(cfg, tmp_path)
    assert stopped.value.status == 1
    state = load_checkpoint(tmp_path / CHECKPOINT)  # the last checkpoint before the updates began
    assert state["collector"]["env_steps"] == 100 and state["agent"]["skipped"] == 0
    assert not (tmp_path / "model.pt").exists()


def test_a_skipped_update_changes_nothing(compose_config):
    cfg = compose_config(*DEBUG)
    _, spec = make_env(cfg.env.id)
    agent = build_agent(cfg, spec, torch.device("cpu"))
    replay = Replay(100, 0)
    fill(replay, 60)
    agent.update(replay.sample(4, 8))
    before = {k: v for k, v in agent.state_dict().items() if k not in ("skipped", "skipped_in_a_row")}
    before = torch.utils._pytree.tree_map(lambda x: x.clone() if torch.is_tensor(x) else x, before)
    batch = replay.sample(4, 8)
    batch["obs"][0, 3] = np.inf
    metrics = agent.update(batch)
    assert metrics and all(torch.isnan(v) for v in metrics.values())  # left out of the logged means
    assert (agent.skipped, agent.skipped_in_a_row) == (1, 1)
    after = {k: v for k, v in agent.state_dict().items() if k not in ("skipped", "skipped_in_a_row")}
    assert_same_state(after, before)
    metrics = agent.update(replay.sample(4, 8))
    assert all(torch.isfinite(v) for v in metrics.values()) and (agent.skipped, agent.skipped_in_a_row) == (1, 0)


WM_RUN = (*DEBUG, "agent=world_model", "replay.chunk=32", "trainer.checkpoint_every=50")


def start_run(run_dir, environ, *args):
    """A long `python -m rssm` run in the background, and a function that waits for its checkpoint."""
    cmd = [sys.executable, "-m", "rssm", *WM_RUN, "trainer.steps=100000", f"hydra.run.dir={run_dir}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
                            cwd=run_dir.parent)

    def checkpoint_at_least(steps):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / CHECKPOINT).exists():
                state = load_checkpoint(run_dir / CHECKPOINT)  # renamed into place whole: always readable
                if state["collector"]["env_steps"] >= steps:
                    return state
            time.sleep(0.2)
        proc.kill()
        raise AssertionError(f"no checkpoint at {steps} steps: {proc.communicate()[1]}")

    return proc, checkpoint_at_least


def chunk_files(run_dir):
    """{index: bytes} of the replay chunks, each checked to be a whole chunk."""
    chunks = {}
    for path in sorted((run_dir / "replay").glob("chunk_*.npz")):
        with np.load(path) as chunk:
            assert all(len(chunk[k]) == 32 for k in chunk.files), path
        chunks[int(path.name[6:12])] = path.read_bytes()
    return chunks


def test_sigkill_mid_run_then_resume_goes_on_from_the_last_checkpoint(tmp_path, run_cli, cli_environ):
    run_dir = tmp_path / "run"
    proc, checkpoint_at_least = start_run(run_dir, cli_environ)
    checkpoint_at_least(150)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = load_checkpoint(run_dir / CHECKPOINT)
    steps, updates, total = state["collector"]["env_steps"], state["progress"]["updates"], state["replay"]["total"]
    before = chunk_files(run_dir)
    assert sorted(before)[: total // 32] == list(range(total // 32))  # every full chunk the checkpoint needs

    target = steps + 60
    proc = run_cli(*WM_RUN, f"trainer.steps={target}", f"resume={run_dir}", "allow_changes=[trainer.steps]",
                   f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {run_dir / CHECKPOINT} at env step {steps}, update {updates}" in proc.stdout
    final = load_checkpoint(run_dir / CHECKPOINT)
    assert final["collector"]["env_steps"] == target and final["progress"]["updates"] > updates
    after = chunk_files(run_dir)
    assert sorted(after) == list(range(final["replay"]["total"] // 32))
    assert all(after[i] == before[i] for i in range(total // 32))  # the replay before the checkpoint is kept
    assert not list((run_dir / "replay").glob("*.tmp")) and (run_dir / "model.pt").exists()


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, cli_environ):
    run_dir = tmp_path / "run"
    proc, checkpoint_at_least = start_run(run_dir, cli_environ)
    checkpoint_at_least(50)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at env step" in stderr and f"continue with: rssm-train resume={run_dir}\n" in stderr
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] >= 50


def test_bad_resumes_are_one_line_with_status_2(compose_config, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    train(compose_config(*WM_RUN, "trainer.steps=120"), run_dir)
    broken = tmp_path / "broken.pt"
    broken.write_bytes((run_dir / CHECKPOINT).read_bytes()[:5000])
    cases = [
        ([f"resume={tmp_path / 'nowhere'}"], f"no checkpoint at {tmp_path / 'nowhere'}"),
        ([f"resume={broken}"], f"cannot load checkpoint {broken}: "),
        ([f"resume={run_dir}", "model.deter=64", "allow_changes=[model.deter]"],
         "holds a different model: world_model 'cont.hidden.0.weight' is shape (32, 48) there, shape (32, 80) here"),
        ([f"resume={run_dir}", "trainer.steps=500", "wm.lr=0.1"], "config differs from the run's"),
    ]
    for args, message in cases:
        proc = run_cli(*WM_RUN, "trainer.steps=120", f"hydra.run.dir={tmp_path / 'other'}", *args, cwd=tmp_path,
                       timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("rssm-train: error: "), proc.stderr
        assert message in lines[0]
    assert "trainer.steps: 120 -> 500; wm.lr: 0.0003 -> 0.1" in lines[0]
    assert "allow_changes=[trainer.steps,wm.lr]" in lines[0]
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 120  # nothing was touched
