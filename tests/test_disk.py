"""Full disks, read-only run directories and leftover temporary files: a write that fails is refused or stops the
run in one line, keeping the last checkpoint (or saving one where it still fits) and leaving no half-written file."""

import subprocess
from pathlib import Path

import pytest
from conftest import RUN, copy_run, one_line, refused

import rssm.training
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.config import UserError
from rssm.training import train


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size) -> a fresh tmpfs of `size` mounted under tmp_path (tests run as root in CI), unmounted after."""
    mounts = []

    def _mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")
        mounts.append(where)
        return where

    yield _mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def test_read_only_run_directories(compose_config, tmpfs, finished):
    disk = tmpfs("4m")
    run_dir = copy_run(finished, disk / "run")
    read_only(disk)
    refused(compose_config(*RUN), disk / "new", f"cannot write to {disk}: read-only file system")
    refused(compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]"),
            run_dir, f"cannot write to {run_dir}: read-only file system", run_dir)


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(compose_config, tmpfs, faulty):
    disk = tmpfs("5m")  # the checkpoint at 100 (2.7 MB) fits, not the one at 200 (3.5 MB) beside it
    run_dir = disk / "run"
    # The replay's tail (the rows after the last chunk) is one large tensor in the checkpoint: torch.save reports
    # the failed write of a large tensor as a RuntimeError, not an OSError.
    cfg = compose_config(*RUN, "env.id=faulty_envs:BigObs-v0", "trainer.prefill=50", "replay.chunk=512")
    refused(cfg, run_dir, f"cannot write {run_dir / CHECKPOINT}: No space left on device (the previous file, if any, "
            "is intact)")
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "model.pt").exists()


def test_a_replay_chunk_that_does_not_fit(compose_config, tmpfs, faulty):
    disk = tmpfs("96k")  # config and events fit, a 128 KB chunk does not
    run_dir = disk / "run"
    cfg = compose_config(*RUN, "env.id=faulty_envs:BigObs-v0", "replay.chunk=16", "trainer.checkpoint_every=1000")
    refused(cfg, run_dir, f"cannot write {run_dir / 'replay' / 'chunk_000000.npz'}: No space left on device")
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / CHECKPOINT).exists()


def test_a_disk_that_fills_mid_run_stops_it_keeping_the_last_checkpoint(compose_config, tmpfs, faulty, monkeypatch):
    disk = tmpfs("4m")
    run_dir, filler = disk / "run", disk / "filler"
    faulty("fill_disk")
    monkeypatch.setenv("FILL", str(filler))  # filled at env step 150; the first write after is replay chunk 4's
    args = (*RUN, "env.id=faulty_envs:Faulty-v0", "trainer.steps=300", "logger=[tensorboard,jsonl,csv]")
    with pytest.raises(UserError) as e:
        train(compose_config(*args), run_dir)
    assert one_line(str(e.value)) == (f"cannot write {run_dir / 'replay' / 'chunk_000004.npz'}: No space left on "
                                      f"device (the previous file, if any, is intact); stopped, the last checkpoint "
                                      f"in {run_dir} is kept")
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "model.pt").exists()
    filler.unlink()
    faulty("")
    last = train(compose_config(*args, f"resume={run_dir}"), run_dir)
    assert last["eval/return_mean"] > 0 and (run_dir / "model.pt").exists()


def test_a_disk_that_fills_saves_a_checkpoint_where_one_still_fits(compose_config, tmpfs, faulty, monkeypatch):
    disk = tmpfs("4m")
    run_dir, filler = disk / "run", disk / "filler"
    faulty("fill_disk")
    monkeypatch.setenv("FILL", str(filler))
    real = rssm.training._save_after

    def room_made(*args):  # space freed after the failed write: the stopping run's checkpoint fits
        filler.unlink()
        return real(*args)

    monkeypatch.setattr(rssm.training, "_save_after", room_made)
    args = (*RUN, "env.id=faulty_envs:Faulty-v0", "trainer.steps=300", "trainer.checkpoint_every=0")
    with pytest.raises(UserError) as e:
        train(compose_config(*args), run_dir)
    assert one_line(str(e.value)).endswith(f"No space left on device (the previous file, if any, is intact); "
                                           f"checkpoint saved at env step 154, continue with: rssm-train "
                                           f"resume={run_dir} once there is room")
    assert (run_dir / "replay" / "chunk_000004.npz").is_file()  # the chunk that failed, written with the checkpoint
    faulty("")
    last = train(compose_config(*args, f"resume={run_dir}"), run_dir)
    assert last["eval/return_mean"] > 0 and (run_dir / "model.pt").exists()


def test_leftover_temporary_files_are_removed_once_the_lock_is_held(compose_config, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    leftovers = [run_dir / f"{CHECKPOINT}.4242.tmp", run_dir / "replay" / "chunk_000009.npz.4242.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    (run_dir / "notes.tmp").write_text("the user's")
    train(compose_config(*RUN, "trainer.steps=260", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir)
    assert not any(p.exists() for p in leftovers) and (run_dir / "notes.tmp").exists()
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 260
