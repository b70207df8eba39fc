"""Replay files on disk: compressed chunks, old uncompressed chunks, and runs that keep no replay (replay.save)."""

import io
import signal
import zipfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.collector import Collector, make_envs
from rssm.config import UserError, config_changes
from rssm.dream import main as dream_main
from rssm.envs import make_env, random_action
from rssm.replay import Replay, read_chunk, write_chunk
from rssm.training import RunStopped, train

RUN = ("experiment=debug", "trainer.progress=false", "agent=world_model", "replay.chunk=32")


def odd_rows(n: int) -> dict[str, np.ndarray]:
    """n rows of 2 envs holding every kind of value a chunk stores: full-range uint8 images, float32 with NaN,
    infinities, -0.0 and subnormals, bools."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, 2, 5)).astype(np.float32)
    obs[0, 0] = [np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).smallest_subnormal]
    return {"image": rng.integers(0, 256, (n, 2, 6, 6, 3), dtype=np.uint8), "obs": obs,
            "reward": rng.standard_normal((n, 2)).astype(np.float32), "is_first": rng.random((n, 2)) < 0.5,
            "is_terminal": rng.random((n, 2)) < 0.5}


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].dtype, a[k].shape, a[k].tobytes()) == (b[k].dtype, b[k].shape, b[k].tobytes()), k


def test_chunks_are_deflated_and_round_trip_bit_for_bit(tmp_path):
    rows = odd_rows(8)
    replay = Replay(capacity=32, seed=0, directory=tmp_path, chunk=8, envs=2)
    for r in range(8):
        replay.add({k: v[r] for k, v in rows.items()})
    path = tmp_path / "chunk_000000.npz"
    with zipfile.ZipFile(path) as archive:
        assert {i.filename: i.compress_type for i in archive.infolist()} == dict.fromkeys(
            [f"{k}.npy" for k in rows], zipfile.ZIP_DEFLATED)
    assert_identical(read_chunk(path), rows)
    stored = io.BytesIO()
    write_chunk(stored, rows, level=0)  # level 0: stored as np.savez stores
    with zipfile.ZipFile(stored) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(stored) as chunk:
        assert_identical({k: chunk[k] for k in chunk.files}, rows)


def test_pixel_chunks_are_many_times_smaller_than_uncompressed(tmp_path):
    env, spec = make_env("CartPole-v1", pixels=True)  # 64 x 64 x 3 frames
    collector, rng = Collector(make_envs(lambda: env, 1), spec, 0), np.random.default_rng(0)
    replay = Replay(capacity=64, seed=0, directory=tmp_path, chunk=32)
    for _ in range(32):
        replay.add(collector.step(random_action(spec, rng))[0])
    env.close()
    arrays = read_chunk(tmp_path / "chunk_000000.npz")
    assert arrays["image"].shape == (32, 1, 64, 64, 3) and arrays["image"].std() > 0  # real frames
    plain = io.BytesIO()
    np.savez(plain, **arrays)
    compressed = (tmp_path / "chunk_000000.npz").stat().st_size
    assert compressed * 20 < len(plain.getvalue()), (compressed, len(plain.getvalue()))


def test_old_uncompressed_chunks_load_exactly(tmp_path):
    rows = odd_rows(20)
    replay = Replay(capacity=16, seed=0, directory=tmp_path, chunk=4, envs=2)
    for r in range(20):
        replay.add({k: v[r] for k, v in rows.items()})
    replay.prune(replay.total)
    for path in tmp_path.iterdir():  # as written before compression
        arrays = read_chunk(path)
        np.savez(path, **arrays)
    loaded = Replay(capacity=16, seed=0, directory=tmp_path, chunk=4, envs=2)
    loaded.load_state_dict(replay.state_dict())
    assert_identical(loaded.data, replay.data)


def rewrite_uncompressed(replay_dir) -> dict[str, bytes]:
    """Rewrite every chunk as np.savez wrote them before compression; their bytes by name."""
    for path in replay_dir.iterdir():
        arrays = read_chunk(path)
        np.savez(path, **arrays)
    return {p.name: p.read_bytes() for p in replay_dir.iterdir()}


def test_a_run_with_old_uncompressed_chunks_resumes(compose_config, tmp_path):
    train(compose_config(*RUN, "trainer.steps=100", "trainer.prefill=50"), tmp_path)
    old = rewrite_uncompressed(tmp_path / "replay")
    assert sorted(old) == [f"chunk_00000{i}.npz" for i in range(3)]
    train(compose_config(*RUN, "trainer.steps=140", "trainer.prefill=50", f"resume={tmp_path}",
                       "allow_changes=[trainer.steps]"), tmp_path)
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] == 140
    assert all((tmp_path / "replay" / name).read_bytes() == data for name, data in old.items())  # never rewritten
    with zipfile.ZipFile(tmp_path / "replay" / "chunk_000003.npz") as archive:  # the new chunk is compressed
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_replay_save_false_writes_no_replay_and_refuses_resume(compose_config, tmp_path, capsys):
    cfg = compose_config(*RUN, "trainer.steps=120", "trainer.checkpoint_every=50", "replay.save=false")
    train(cfg, tmp_path)
    assert not (tmp_path / "replay").exists() and (tmp_path / "model.pt").exists()
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["replay"]["saved"] is False and state["replay"]["tail"] == {}
    assert state["replay"]["total"] >= 120 and state["collector"]["env_steps"] == 120  # resets add rows
    with pytest.raises(UserError) as refused:
        train(compose_config(*RUN, "trainer.steps=200", "replay.save=false", f"resume={tmp_path}"), tmp_path)
    assert str(refused.value) == (f"cannot resume {tmp_path / CHECKPOINT}: its run had replay.save=false, so its "
                                  f"replay was not saved (its weights are in {tmp_path / 'model.pt'} once it "
                                  f"stopped or ended)")
    with pytest.raises(SystemExit) as exit_info:
        dream_main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"rssm-dream: error: {tmp_path} has no replay to draw from: the run had " \
                                      f"replay.save=false\n"


def test_sigint_without_saved_replay_writes_the_weights_and_no_resume_hint(compose_config, tmp_path, monkeypatch):
    real_step = Collector.step

    def step_then_interrupt(self, actions):
        out = real_step(self, actions)
        if self.env_steps == 150:  # after the prefill: the weights have been trained
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C would, caught by the loop's handler
        return out

    monkeypatch.setattr(Collector, "step", step_then_interrupt)
    with pytest.raises(RunStopped) as stopped:
        train(compose_config(*RUN, "trainer.steps=300", "replay.save=false"), tmp_path)
    assert stopped.value.status == 128 + signal.SIGINT
    assert str(stopped.value) == (f"stopped by SIGINT at env step 150; weights saved to {tmp_path / 'model.pt'} "
                                  f"(replay.save=false: the run cannot be resumed)")
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["world_model"]
    saved = load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["collector"]["env_steps"] == 150 and saved["progress"]["updates"] > 0
    assert not (tmp_path / "replay").exists()
    assert all(torch.equal(v, saved["agent"]["world_model"][k]) for k, v in weights.items())


def test_a_saved_run_cannot_drop_its_replay_on_resume(compose_config, tmp_path):
    train(compose_config(*RUN, "trainer.steps=40", "trainer.prefill=20"), tmp_path)
    with pytest.raises(UserError, match=f"^replay.save=false cannot be given to resume {tmp_path / CHECKPOINT}: "):
        train(compose_config(*RUN, "trainer.steps=40", "trainer.prefill=20", "replay.save=false",
                             "allow_changes=[replay.save]", f"resume={tmp_path}"), tmp_path)


def test_a_run_saved_before_replay_save_existed_resumes_without_it(compose_config):
    cfg = compose_config(*RUN)
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["replay"]["save"]
    assert config_changes(saved, cfg) == []
    assert config_changes(saved, compose_config(*RUN, "replay.save=false")) == ["replay.save: True -> False"]


def test_a_replay_on_the_device_samples_the_same_windows_and_reloads(tmp_path):
    """`sample_tensors` gathers on the buffer's device (here the CPU, the only one on CI) what `sample` gathers on the
    host, for the same generator state; a buffer that wrapped around, and one refilled from its files, alike."""
    rows = odd_rows(50)
    replay = Replay(40, seed=0, directory=tmp_path, chunk=8, envs=2, device=torch.device("cpu"))
    for i in range(50):  # wraps past its 20 rows
        replay.add({k: v[i] for k, v in rows.items()})

    def same_windows(buffer: Replay) -> None:
        host = buffer.sample(6, 5, np.random.default_rng(3))
        tensors = buffer.sample_tensors(6, 5, np.random.default_rng(3))
        assert_identical(host, {k: v.numpy() for k, v in tensors.items()})
        assert host["is_first"][:, 0].all()

    before = replay.data["is_first"].copy()
    same_windows(replay)
    assert np.array_equal(replay.data["is_first"], before)  # window starts are marked on the batch, not the buffer
    again = Replay(40, seed=0, directory=tmp_path, chunk=8, envs=2, device=torch.device("cpu"))
    again.load_state_dict(replay.state_dict())
    same_windows(again)
    with pytest.raises(ValueError, match="keeps no copy on a device"):
        Replay(40, seed=0).sample_tensors(2, 2)


def test_a_run_with_its_replay_on_the_device_trains(compose_config, tmp_path):
    metrics = train(compose_config(*RUN, "replay.on_device=true", "trainer.steps=120"), tmp_path)
    assert np.isfinite(metrics["loss/wm"])
