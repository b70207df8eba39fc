"""Checkpoints: saving and safe loading of a run, and RNG states.

A checkpoint is one `torch.save` file, read back with `torch.load(weights_only=True)`: it holds only tensors,
numbers, strings, lists and dicts, so loading one can never run code. It is written through a temporary file
that is fsynced and renamed over the old one, so a crash or a full disk leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rssm.collector import blank_transition
from rssm.config import UserError, saved_run_config
from rssm.distributed import SINGLE, Ranks
from rssm.envs import EnvSpec
from rssm.files import WriteFailed, atomic_write
from rssm.messages import first_line
from rssm.replay import as_rows

if TYPE_CHECKING:  # the run's objects, for annotations only: they import this module
    from rssm.agent import Agent
    from rssm.collector import Collector
    from rssm.replay import Replay

CHECKPOINT = "checkpoint.pt"
FORMAT = 1  # bumped when the layout below changes incompatibly


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


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely. With `mmap`, tensors are mapped from the file rather than read (for a reader
    that needs only the config). Raises UserError for a missing, truncated, corrupted, foreign or unsafe file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns before raising; the error below says it in one line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise UserError(f"cannot load checkpoint {path}: it is a directory") from None
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(f"cannot load checkpoint {path}: it holds objects other than tensors and plain data, and "
                            f"loading them could run code, so it is refused") from None
        raise UserError(f"cannot load checkpoint {path}: the file is damaged ({_sentence(e)})") from None
    except PermissionError as e:
        raise UserError(f"cannot load checkpoint {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        what = "truncated or damaged" if _damaged_zip(path) else f"damaged ({_sentence(e)})"
        raise UserError(f"cannot load checkpoint {path}: the file is {what}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"cannot load checkpoint {path}: not an rssm checkpoint of format {FORMAT}")
    _check_config(path, state.get("config", {}))
    return state


def _check_config(path: Path, config: Any) -> None:
    """Raise UserError unless a checkpoint's `config` is a mapping that the schema takes (`saved_run_config`)."""
    if not isinstance(config, dict):
        raise UserError(f"cannot load checkpoint {path}: its config is a {type(config).__name__}, not a mapping of "
                        f"the run's settings")
    try:
        saved_run_config(config)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise UserError(f"cannot load checkpoint {path}: its config does not fit the schema: "
                        f"{f'{key}: ' if key else ''}{str(e).strip().splitlines()[0]}") from None


def _damaged_zip(path: Path) -> bool:
    """Whether `path` is not a whole zip archive (torch.save's format): a file cut short fails this."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return True


def _sentence(e: BaseException) -> str:
    """The first sentence of an error's first line (an unpickler's can run on for a paragraph)."""
    return first_line(e).split(". ")[0]


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


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Torch's random numbers (CPU, and `device` if it is a GPU) drawn from `seed` inside, the caller's random
    state as it was after; nothing with None. Evaluations and open-loop errors use it, so that training goes on the
    same whether they ran."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


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
             rng: np.random.Generator, ranks: Ranks = SINGLE) -> None:
    """Checkpoint a run: config, agent (weights, optimizers, normaliser), replay counters and its partial
    chunk, the collector's counters and episodes under way (seeds and actions), the loop's `progress`
    (`progress.state_dict()`) and every RNG. Then delete the replay chunks this checkpoint no longer needs.

    In a data-parallel job every rank calls this together: rank 0 writes one file with the agent (equal on every
    rank) and each rank's own part (`rank_parts`), in rank order under `ranks`. Raises WriteFailed on every rank
    if rank 0 could not write it."""
    replay.flush()  # the chunk files first: the rows whose stored states changed since they were written
    replay_state = replay.state_dict()
    replay_state["tail"] = arrays_to_tensors(replay_state["tail"])
    mine = {"replay": replay_state, "collector": to_tensors(collector.state_dict()),
            "progress": to_tensors(progress.state_dict()), "rng": {**rng_state(), "actions": rng.bit_generator.state}}
    parts = ranks.collect(mine)
    problem = None
    if ranks.main:
        run = {"config": OmegaConf.to_container(cfg, resolve=True), "agent": agent.state_dict()}
        try:
            save_checkpoint(path, {**run, **mine} if ranks.world == 1 else {**run, "ranks": parts})
        except WriteFailed as e:
            problem = e.reason
    problem = ranks.share(problem)
    if problem:
        raise WriteFailed(path, problem)
    replay.prune(replay.total)


def rank_parts(path: Path, state: dict, world: int) -> list[dict]:
    """The per-rank parts of a `save_run` checkpoint (replay, collector, progress, rng), one per rank. Raises
    UserError when the checkpoint lacks them, or was saved by a job of another number of ranks."""
    parts = state["ranks"] if "ranks" in state else [state]
    missing = {"replay", "collector", "progress", "rng"} - parts[0].keys()
    if missing:
        raise UserError(f"cannot load checkpoint {path}: it lacks {', '.join(sorted(missing))}")
    if len(parts) != world:
        saved = "one process" if len(parts) == 1 else f"{len(parts)} ranks (torchrun --nproc-per-node x --nnodes)"
        now = "one process" if world == 1 else f"{world} ranks"
        raise UserError(f"cannot resume {path} with {now}: its run was trained with {saved}, and a run continues "
                        f"with the ranks it began with")
    return parts


def restore_run(path: Path, state: dict, agent: Agent, replay: Replay, collector: Collector,
                rng: np.random.Generator, ranks: Ranks = SINGLE) -> dict[str, Any]:
    """Load a `save_run` checkpoint into freshly built objects, this rank's part of it into the replay, collector
    and RNGs; returns the saved progress state (tensors)."""
    for name, module in agent.modules().items():
        check_shapes(path, name, state["agent"].get(name, {}), module.state_dict())
    agent.load_state_dict(state["agent"])
    part = rank_parts(path, state, ranks.world)[ranks.rank]
    tail = tensors_to_arrays(part["replay"]["tail"])
    check_tail(path, tail, collector.spec, replay.envs)
    replay.load_state_dict({**part["replay"], "tail": tail})
    collector.load_state_dict(to_arrays(part["collector"]))
    set_rng_state(part["rng"])
    rng.bit_generator.state = part["rng"]["actions"]
    return part["progress"]


def check_tail(path: Path, tail: dict[str, np.ndarray], spec: EnvSpec, envs: int) -> None:
    """Raise UserError if the replay rows a checkpoint at `path` holds (its `tail`, whose layout every chunk file
    must have) are not the rows of `envs` envs of `spec` that the resumed run adds to them."""
    rows = as_rows(tail)
    if not rows:  # an empty replay
        return
    for k, v in blank_transition(spec).items():
        if k not in rows:
            raise UserError(f"cannot resume from checkpoint {path}: its replay lacks '{k}'")
        if rows[k].shape[1:] != (envs, *v.shape):
            raise UserError(f"cannot resume from checkpoint {path}: its replay's '{k}' has rows of shape "
                            f"{rows[k].shape[1:]}, the env's are {(envs, *v.shape)}")


def save_model(agent: Agent, path: Path) -> None:
    """The weights `rssm.load` and `rssm-eval` read: world model, and actor and critic where there are."""
    state = {"world_model": agent.wm.state_dict()}
    if agent.actor is not None:
        state.update(actor=agent.actor.state_dict(), critic=agent.critic.state_dict())
    atomic_write(path, lambda f: torch.save(state, f))
