"""Files of a run directory: atomic writes, the run's lock, and what a killed writer leaves behind."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rssm.config import UserError

LOCK = ".lock"  # held (flock) by the run writing the directory
TMP_SUFFIX = ".tmp"
_LEFTOVER = re.compile(r".+\.\d+" + re.escape(TMP_SUFFIX))  # atomic_write's temporary files


class WriteFailed(UserError):
    """A file could not be written (a full disk, a read-only mount, a lost mount): a run stops at once, keeping
    its last checkpoint whole. `path` is the file."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = Path(path), reason


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OSError inside the block into WriteFailed(path): appends to a log file, events, metrics."""
    try:
        yield
    except OSError as e:
        raise WriteFailed(path, e.strerror or str(e)) from None


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)`: into a temporary file beside it, fsynced, then renamed over it.

    Readers see the old file or the new one, never a part. Raises WriteFailed (the old file untouched) when
    the write fails, e.g. on a full disk or a read-only file system.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed write (ENOSPC included) as a RuntimeError from its C++ writer, with no
        # errno ("unexpected pos 704 vs 598"): the file system's free space tells what happened.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _write_reason(path, e)  # tmp still full
        _remove(tmp)
        raise WriteFailed(path, f"{reason} (the previous file, if any, is intact)") from None
    except BaseException:
        _remove(tmp)
        raise


def _write_reason(path: Path, e: Exception) -> str:
    """Why a write failed, when the error does not carry an errno: a full file system, or its first line."""
    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < 1 << 20 or st.f_favail == 0:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # e.g. a read-only file system, where the file was not made either


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in `run_dir` and its replay folder (with its
    ranks' shards, `replay/rank_K/`) (`atomic_write`'s `NAME.PID.tmp`). Only safe while holding the run's lock.
    Returns the deleted paths."""
    replay = run_dir / "replay"
    folders = [run_dir, replay, *(replay.glob("rank_*") if replay.is_dir() else [])]
    found = [p for d in folders if d.is_dir() for p in d.iterdir() if _LEFTOVER.fullmatch(p.name) and p.is_file()]
    for path in found:
        path.unlink()
    return found


def first_missing(path: Path) -> Path | None:
    """The highest folder of `path` that does not exist yet, None if `path` exists: where making it begins."""
    path, missing = Path(path).absolute(), None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def remove_made(run_dir: Path, made: Path) -> None:
    """Undo the making of `run_dir`, whose folders from `made` down did not exist, for a run that was refused: its
    lock file and those folders, as long as they hold nothing else (a run that wrote files keeps them)."""
    run_dir, made = Path(run_dir).absolute(), Path(made).absolute()
    if made != run_dir and made not in run_dir.parents:
        return
    try:
        if {p.name for p in run_dir.iterdir()} <= {LOCK}:
            (run_dir / LOCK).unlink(missing_ok=True)
        folder = run_dir
        while True:
            folder.rmdir()  # only an empty one
            if folder == made:
                break
            folder = folder.parent
    except OSError:
        pass  # not empty, or not ours to remove: left as it is


def lock_run_dir(run_dir: Path) -> IO[bytes]:
    """Make `run_dir` if needed and take an exclusive lock on its lock file, held until the returned file is
    closed (the OS releases it when the process dies). The lock file is created if absent and never written.

    Raises:
        UserError: the path is a file or under one, cannot be written (read-only, permissions), or another
            process holds the lock.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot use {run_dir} as a run directory: {e.strerror or e}") from None
    lock = os.fdopen(fd, "r+b")  # stays empty: a refused run must change no file of the run it found
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(f"{run_dir} is in use by another run; wait for it to end or pick another dir") from None
    return lock


def check_run_dir(path: Path) -> None:
    """Raise UserError if `path` cannot be a run directory: it is a file, lies under a file, or cannot be
    written (a read-only mount)."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"run directory {path} is a file")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"run directory {path} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        raise UserError(f"cannot write to {existing}: {'read-only file system' if read_only else 'permission denied'}")
