"""Checkpoints: atomic files, RNG states, and safe loading.

A checkpoint is one `torch.save` file, read back with `torch.load(weights_only=True)`: it holds only tensors,
numbers, strings, lists and dicts, so loading one can never run code. It is written through a temporary file
that is fsynced and renamed over the old one, so a crash or a full disk leaves the previous checkpoint whole.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import random
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rssm.config import UserError

if TYPE_CHECKING:  # the run's objects, for annotations only: they import this module
    from rssm.agent import Agent
    from rssm.envs import Collector
    from rssm.replay import Replay

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"  # held (flock) by the run writing the directory
TMP_SUFFIX = ".tmp"
_LEFTOVER = re.compile(r".+\.\d+" + re.escape(TMP_SUFFIX))  # atomic_write's temporary files
FORMAT = 1  # bumped when the layout below changes incompatibly


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)`: into a temporary file beside it, fsynced, then renamed over it.

    Readers see the old file or the new one, never a part. Raises UserError (the old file untouched) when
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
        raise UserError(f"cannot write {path}: {reason} (the previous file, if any, is intact)") from None
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
    """Delete the temporary files that writers killed mid-write left in `run_dir` and its replay folder
    (`atomic_write`'s `NAME.PID.tmp`). Only safe while holding the run's lock. Returns the deleted paths."""
    found = [p for d in (run_dir, run_dir / "replay") if d.is_dir() for p in d.iterdir()
             if _LEFTOVER.fullmatch(p.name) and p.is_file()]
    for path in found:
        path.unlink()
    return found


def lock_run_dir(run_dir: Path) -> IO[bytes]:
    """Make `run_dir` if needed and take an exclusive lock on its lock file, held until the returned file is
    closed (the OS releases it when the process dies). The lock file is created if absent and never written.

    Raises:
        UserError: the path is a file or under one, cannot be written (read-only, permissions), or another
            process holds the lock.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file, not a directory")
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


def checkpoint_path(resume: str | Path) -> Path:
    """The checkpoint a `resume=` value names: a run directory or a checkpoint file."""
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    return path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely. Raises UserError for a missing, truncated, corrupted, foreign or unsafe file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns before raising; the error below says it in one line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise UserError(f"cannot load checkpoint {path}: it is a directory") from None
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(f"cannot load checkpoint {path}: it holds objects other than tensors and plain data, and "
                            f"loading them could run code, so it is refused") from None
        raise UserError(f"cannot load checkpoint {path}: the file is damaged ({_first_line(e)})") from None
    except PermissionError as e:
        raise UserError(f"cannot load checkpoint {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        what = "truncated or damaged" if _damaged_zip(path) else f"damaged ({_first_line(e)})"
        raise UserError(f"cannot load checkpoint {path}: the file is {what}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"cannot load checkpoint {path}: not an rssm checkpoint of format {FORMAT}")
    return state


def _damaged_zip(path: Path) -> bool:
    """Whether `path` is not a whole zip archive (torch.save's format): a file cut short fails this."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return True


def _first_line(e: BaseException) -> str:
    """The first sentence of an error's message, or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(e).__name__


def check_shapes(path: Path, name: str, saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> None:
    """Raise UserError naming the first tensor of `name` whose shape (or presence) differs from `current`."""
    for key in sorted(saved.keys() | current.keys()):
        a, b = saved.get(key), current.get(key)
        if a is None or b is None or a.shape != b.shape:
            there = "absent" if a is None else f"shape {tuple(a.shape)}"
            here = "absent" if b is None else f"shape {tuple(b.shape)}"
            raise UserError(f"checkpoint {path} holds a different model: {name} '{key}' is {there} there, "
                            f"{here} here")


def rng_state() -> dict[str, Any]:
    """The global RNGs of python, numpy and torch (CPU and every CUDA device)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()  # a plain list: weights_only reads no arrays
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.asarray(np_state["state"]["key"], np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def arrays_to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def tensors_to_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def to_tensors(value: Any) -> Any:
    """`value` with every numpy array in its dicts and lists made a tensor, for `torch.load(weights_only)`."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: to_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_tensors(v) for v in value]
    return value


def to_arrays(value: Any) -> Any:
    """The inverse of `to_tensors`: every tensor in `value`'s dicts and lists made a numpy array."""
    if torch.is_tensor(value):
        return value.numpy()
    if isinstance(value, dict):
        return {k: to_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_arrays(v) for v in value]
    return value


def save_run(path: Path, cfg: DictConfig, agent: Agent, replay: Replay, collector: Collector, progress: Any,
             rng: np.random.Generator) -> None:
    """Checkpoint a run: config, agent (weights, optimizers, normaliser), replay counters and its partial
    chunk, the collector's counters and episodes under way (seeds and actions), the loop's `progress`
    (`progress.state_dict()`) and every RNG. Then delete the replay chunks this checkpoint no longer needs."""
    replay_state = replay.state_dict()
    replay_state["tail"] = arrays_to_tensors(replay_state["tail"])
    save_checkpoint(path, {"config": OmegaConf.to_container(cfg, resolve=True), "agent": agent.state_dict(),
                           "replay": replay_state, "collector": to_tensors(collector.state_dict()),
                           "progress": to_tensors(progress.state_dict()),
                           "rng": {**rng_state(), "actions": rng.bit_generator.state}})
    replay.prune(replay.total)


def restore_run(path: Path, state: dict, agent: Agent, replay: Replay, collector: Collector,
                rng: np.random.Generator) -> dict[str, Any]:
    """Load a `save_run` checkpoint into freshly built objects; returns the saved progress state (tensors)."""
    for name, module in agent.modules().items():
        check_shapes(path, name, state["agent"].get(name, {}), module.state_dict())
    agent.load_state_dict(state["agent"])
    replay.load_state_dict({**state["replay"], "tail": tensors_to_arrays(state["replay"]["tail"])})
    collector.load_state_dict(to_arrays(state["collector"]))
    set_rng_state(state["rng"])
    rng.bit_generator.state = state["rng"]["actions"]
    return state["progress"]
