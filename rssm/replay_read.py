"""A finished run's replay, read back for drawing and dreaming (`rssm-dream`, `rssm.DreamEnv(start="replay")`).

A run writes its replay as chunk files of `replay.chunk` rows (`RUN_DIR/replay/chunk_*.npz`; a torchrun job's
under `replay/rank_R/`), and keeps the rows after the last full chunk in its checkpoint (`state["replay"]["tail"]`,
`rssm.replay.Replay.state_dict`). A short run (`experiment=debug`: 300 steps, fewer than one chunk) has only those.
Both are read here: the tail is the chunk that the run would have written next. Offline training on a run's
replay (`offline.replay`, rssm/offline.py) reads every rank's tail (`checkpoint_tails`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rssm.checkpoint import load_checkpoint
from rssm.config import UserError
from rssm.replay import as_rows, chunk_files, chunk_streams, read_chunk

Tail = tuple[int, dict[str, np.ndarray]]  # the chunk index the rows would be written as, and the rows (n, envs, ...)


def replay_dir(run_dir: Path) -> Path:
    """Where a run's chunk files are: `RUN_DIR/replay`, or for a torchrun job rank 0's shard in it."""
    replay = Path(run_dir) / "replay"
    return replay / "rank_0" if (replay / "rank_0").is_dir() else replay


def checkpoint_tail(checkpoint: Path | None, chunk: int) -> Tail | None:
    """The replay rows after the last full chunk that a run's checkpoint holds (rank 0's, in a torchrun job), with
    the index of the chunk they begin; None where there is no such file, or it holds no rows (a run with
    replay.save=false, or one that stopped right after writing a chunk). `chunk` is the run's replay.chunk.

    Raises:
        UserError: the checkpoint cannot be read, or its replay rows are not as the run wrote them.
    """
    return checkpoint_tails(checkpoint, chunk)[0]


def checkpoint_tails(checkpoint: Path | None, chunk: int | None = None) -> list[Tail | None]:
    """`checkpoint_tail` of every rank, in rank order: one for a run in one process, [None] where there is no
    such file or it holds no replay (an offline run's). `chunk` is the run's replay.chunk; default the one in the
    checkpoint's config.

    Raises:
        UserError: the checkpoint cannot be read, or its replay rows are not as the run wrote them.
    """
    if checkpoint is None or not Path(checkpoint).is_file():
        return [None]
    state = load_checkpoint(checkpoint, mmap=True)
    parts = state["ranks"] if isinstance(state.get("ranks"), list) and state["ranks"] else [state]

    def refuse(problem: str) -> UserError:
        return UserError(f"cannot read the replay rows of checkpoint {checkpoint}: {problem}")

    tails: list[Tail | None] = []
    for part in parts:
        replay = part.get("replay") if isinstance(part, dict) else None
        if not isinstance(replay, dict) or not replay.get("tail"):
            tails.append(None)
            continue
        if chunk is None:
            config = state.get("config")
            chunk = config.get("replay", {}).get("chunk") if isinstance(config, dict) else None
            if not isinstance(chunk, int) or chunk < 1:
                raise refuse(f"its config gives no replay.chunk (got {chunk!r})")
        tail, total = replay["tail"], replay.get("total")
        if not isinstance(tail, dict) or not all(torch.is_tensor(v) for v in tail.values()) or "is_first" not in tail:
            raise refuse("they are not arrays with an 'is_first'")
        rows = as_rows({k: v.numpy() for k, v in tail.items()})  # (n, envs, ...)
        n = len(rows["is_first"])
        if not isinstance(total, int) or n != total % chunk or any(len(v) != n for v in rows.values()):
            raise refuse(f"it holds {n} rows after {total} in all, which is not what replay.chunk={chunk} leaves")
        tails.append((total // chunk, rows))
    return tails


def episode_windows(is_first: np.ndarray, length: int) -> np.ndarray:
    """Start positions of the windows of `length` steps of `is_first` (N,) in which no episode starts after the
    first step."""
    starts = np.concatenate([[0], np.cumsum(is_first)])  # (N + 1,): starts[i] = episode starts before step i
    s = np.arange(max(len(is_first) - length + 1, 0))
    return s[starts[s + length] - starts[s + 1] == 0]


def longest_episode(is_first: np.ndarray) -> int:
    """The most steps of `is_first` (N,) without an episode start after the first of them."""
    cuts = np.unique(np.concatenate([[0], np.flatnonzero(is_first), [len(is_first)]]))
    return int(np.diff(cuts).max(initial=0))


def replay_sequences(replay_dir: Path, length: int, count: int, rng: np.random.Generator,
                     tail: Tail | None = None) -> dict[str, np.ndarray]:
    """Up to `count` windows of `length` consecutive transitions of one env from the chunk files in `replay_dir`
    and the checkpoint's `tail` (`checkpoint_tail`), each within one episode, drawn uniformly without replacement
    and kept in replay order. Chunks with consecutive indices hold consecutive rows, so a window may span them; a
    missing index breaks the stream. The tail goes after the chunk before its index; where a chunk file of its
    index exists (the run went on after its checkpoint), that file holds its rows and more, and is read instead.

    Returns:
        Each field (S, length, ...) with S = min(count, windows there are), `is_first` set on the first step.
    Raises:
        UserError: no chunks, an unreadable one, or no stretch of `length` steps within one episode.
    """
    sources: dict[int, Any] = dict(chunk_files(replay_dir))  # index -> a chunk file, or the tail's rows
    if tail is not None and tail[0] not in sources:
        sources = dict(sorted({**sources, tail[0]: tail[1]}.items()))
    if not sources:
        raise UserError(f"{replay_dir} holds no replay chunks (chunk_*.npz)")

    def read(i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        source = sources[i]
        if isinstance(source, dict):
            return source if keys is None else {k: source[k] for k in {"is_first", *keys}}
        return read_chunk(source, keys)

    pools, longest = [], 0  # (run, env, chunk bounds (chunks + 1,), window starts) for each run and env
    for run in chunk_streams(sources):
        firsts = [read(i, ["is_first"])["is_first"] for i in run]  # each (rows, envs)
        bounds = np.cumsum([0] + [len(f) for f in firsts])
        for env in range(firsts[0].shape[1]):
            is_first = np.concatenate([f[:, env] for f in firsts])  # (N,) over the run, one env
            pools.append((run, env, bounds, episode_windows(is_first, length)))
            longest = max(longest, longest_episode(is_first))
    offsets = np.cumsum([0] + [len(starts) for *_, starts in pools])  # (pools + 1,)
    if offsets[-1] == 0:
        raise UserError(f"no stretch of the replay in {replay_dir} has {length} steps within one episode (the "
                        f"longest has {longest}): lower --context or --horizon")
    cache: dict[int, dict[str, np.ndarray]] = {}
    windows = []
    for pick in np.sort(rng.choice(offsets[-1], min(count, offsets[-1]), replace=False)):
        p = int(np.searchsorted(offsets, pick, "right")) - 1
        run, env, bounds, starts = pools[p]
        start = int(starts[pick - offsets[p]])
        first, last = (int(np.searchsorted(bounds, t, "right")) - 1 for t in (start, start + length - 1))
        for i in run[first:last + 1]:
            if i not in cache:
                cache[i] = read(i)
        parts = [cache[i] for i in run[first:last + 1]]
        lo = start - int(bounds[first])
        windows.append({k: np.concatenate([c[k] for c in parts])[lo:lo + length, env]  # (length, ...)
                        for k in parts[0]})
    batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}  # (S, length, ...)
    batch["is_first"][:, 0] = True  # the model starts each window from its initial state
    return batch
