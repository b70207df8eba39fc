"""Replay buffer of transitions with uniform sampling of fixed-length sequences, persisted in chunks."""

from __future__ import annotations

import re
import zipfile
from collections import deque
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch

from rssm.config import UserError
from rssm.files import WriteFailed, atomic_write, writing

_CHUNK = re.compile(r"chunk_(\d+)\.npz")
# zlib level of the chunk files: the fastest, since chunks are written in the training loop. A 1024-step chunk of
# 64 x 64 pixel frames comes out 48-68x smaller and about as quick to write as uncompressed (25-37 ms against
# 21-28 ms, fsync included); np.savez_compressed's level 6 is 1.3-1.6x smaller again but takes 49-64 ms
# (scripts/replay_benchmark.py).
COMPRESS_LEVEL = 1


class Windows(NamedTuple):
    """Where the windows of a batch lie in the buffer."""

    slots: np.ndarray  # (B, T)
    env: np.ndarray  # (B, 1)


def chunk_files(directory: Path) -> dict[int, Path]:
    """The replay chunk files in `directory` by their index, in order; empty if there is no such directory."""
    if not Path(directory).is_dir():
        return {}
    found = {int(m[1]): path for path in Path(directory).iterdir() if (m := _CHUNK.fullmatch(path.name))}
    return dict(sorted(found.items()))


def chunk_streams(files: dict[int, Path]) -> list[list[int]]:
    """The indices of `files` (as `chunk_files` gives them) in streams of consecutive indices: the chunks of one
    stream hold consecutive rows, and a missing index breaks it."""
    streams: list[list[int]] = []
    for index in files:
        if streams and streams[-1][-1] == index - 1:
            streams[-1].append(index)
        else:
            streams.append([index])
    return streams


class Replay:
    """A ring buffer of `capacity` transitions from `envs` environments stepped together.

    The buffer holds rows of `envs` transitions, one row per step of all envs: row r, column i is env i's
    r-th transition. Sequences are windows of consecutive rows in one column, so a sequence never mixes envs.
    They may cross episode boundaries: `is_first` marks where the model state is reset. The first step of
    every sampled window is marked `is_first` too, since the model starts each window from its initial state.

    With a `directory` (made at the first chunk or `flush`), every `chunk` rows are written there as `chunk_NNNNNN.npz`
    (compressed, `write_chunk`) as soon as they are all in (row r is in chunk r // chunk). Files are written once,
    atomically; the partial chunk at the end is part of `state_dict()` instead, so a checkpoint and the files
    describe the buffer.
    Without one the buffer is not saved: `state_dict()` holds no transitions and cannot be loaded back.

    With a `device`, the buffer also keeps a copy of its rows in that device's memory, written as rows are added
    and loaded, and `sample_tensors` gathers windows there: a GPU then gets its batches without a copy from the
    host (for images, most of an update's input). The host arrays stay the record that is saved.

    With `online` (a window length L), each env's rows are cut into windows of L as they come in (rows 0..L-1,
    L..2L-1, ...), and `train_batch` takes the queued windows first, each once, before uniform ones (DreamerV3's
    online queue). `write` changes fields of rows already held (the model states a replay context stores); rows
    of chunks already written are written again by `flush`, so that the files keep describing the buffer.
    """

    def __init__(self, capacity: int, seed: int, directory: Path | None = None, chunk: int = 1024, envs: int = 1,
                 device: torch.device | None = None, online: int = 0):
        if capacity < envs:
            raise UserError(f"replay.capacity ({capacity}) must hold at least one step of the {envs} envs")
        self.capacity, self.envs, self.directory, self.chunk = capacity // envs, envs, directory, chunk  # rows
        if directory is not None and chunk > self.capacity:
            raise UserError(f"replay.chunk ({chunk}) must not exceed the rows of the replay "
                            f"(replay.capacity / env.num_envs = {self.capacity})")
        self.rng = np.random.default_rng(seed)
        self.data: dict[str, np.ndarray] = {}
        self.device = device
        self.on_device: dict[str, torch.Tensor] = {}  # with a device: `data`'s copy there
        self.total = 0  # rows ever added; row r lives in slot r % capacity
        self.size = 0
        self.online = online
        self.queue: deque[tuple[int, int]] = deque()  # with `online`: windows not yet trained on, (first row, env)
        self.dirty: set[int] = set()  # written chunks whose rows `write` changed since

    @property
    def ptr(self) -> int:
        """The next slot to write."""
        return self.total % self.capacity

    def __len__(self) -> int:
        """Rows held: the length of each env's stretch of data."""
        return self.size

    def add(self, transitions: dict[str, np.ndarray]) -> None:
        """Append one row: each field (envs, ...)."""
        if not self.data:  # allocate on first use, when shapes and dtypes are known
            self._allocate({k: np.asarray(v) for k, v in transitions.items()})
        for k, v in transitions.items():
            assert len(v) == self.envs, (k, np.shape(v), self.envs)
            self.data[k][self.ptr] = v
            if self.device is not None and self.device.type != "cpu":
                self.on_device[k][self.ptr] = torch.as_tensor(self.data[k][self.ptr]).to(self.device)
        self.total += 1
        self.size = min(self.size + 1, self.capacity)
        if self.online and self.total % self.online == 0:
            self.queue.extend((self.total - self.online, env) for env in range(self.envs))
        if self.directory is not None and self.total % self.chunk == 0:
            self._write_chunk(self.total // self.chunk - 1)

    def _allocate(self, row: dict[str, np.ndarray]) -> None:
        self.data = {k: np.zeros((self.capacity, *v.shape), v.dtype) for k, v in row.items()}  # (rows, envs, ...)
        self._mirror()

    def _mirror(self) -> None:
        """With a device, copy `data` there whole (on a CPU the tensors share the arrays' memory instead)."""
        if self.device is not None:
            cpu = self.device.type == "cpu"
            self.on_device = {k: torch.from_numpy(v) if cpu else torch.as_tensor(v).to(self.device)
                              for k, v in self.data.items()}

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.data.values())

    def sample(self, batch_size: int, length: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Uniformly sampled windows: each field becomes (batch_size, length, ...). The start positions (and
        with several envs, the env of each window) are drawn from `rng`, by default the buffer's own generator."""
        return self._gather(*self._windows(batch_size, length, rng), on_device=False)

    def _gather(self, idx: np.ndarray, env: np.ndarray, on_device: bool) -> dict[str, np.ndarray | torch.Tensor]:
        """The windows at slots `idx` (B, T) of envs `env` (B, 1): each field (B, T, ...), from the host arrays or
        (`on_device`) from their copy on the buffer's device, where only the indices travel. Each window's first
        step is marked `is_first`."""
        if on_device:
            idx, env = (torch.as_tensor(x).to(self.device, non_blocking=True) for x in (idx, env))
        batch = {k: v[idx, env] for k, v in (self.on_device if on_device else self.data).items()}  # (B, T, ...)
        batch["is_first"][:, 0] = True
        return batch

    def windows(self, length: int) -> int:
        """How many windows of `length` rows the buffer holds, over all envs."""
        return self.envs * max(0, self.size - length + 1)

    def train_batch(self, batch_size: int, length: int) -> tuple[dict[str, np.ndarray | torch.Tensor], Windows]:
        """A training batch of windows: queued ones first (`online`, each once), the rest uniform from the
        buffer's generator; as arrays, or with a `device` as tensors there (`sample_tensors`). Returns the batch
        and where its windows lie (for `write`)."""
        idx, env = self._windows(batch_size, length, None, self._online_windows(batch_size, length))
        return self._gather(idx, env, on_device=self.device is not None), Windows(idx, env)

    def _online_windows(self, batch_size: int, length: int) -> list[tuple[int, int]]:
        """Up to `batch_size` queued windows, as (first row, env), oldest first; those no longer whole in the buffer
        are dropped."""
        taken = []
        while self.queue and len(taken) < batch_size:
            first, env = self.queue.popleft()
            if first >= self.total - self.size and first + length <= self.total:
                taken.append((first, env))
        return taken

    def write(self, where: Windows, fields: dict[str, np.ndarray]) -> None:
        """Set `fields` (each (B, T', ...), one T' for all) at the last T' rows of the windows `where` of a
        `train_batch`; chunks already written are marked for `flush`."""
        steps = next(iter(fields.values())).shape[1]
        idx = where.slots[:, -steps:]  # (B, T')
        mirror = self.device is not None and self.device.type != "cpu"  # on a CPU the copy shares the arrays
        at = [torch.as_tensor(x).to(self.device) for x in (idx, where.env)] if mirror else None
        for k, v in fields.items():
            self.data[k][idx, where.env] = v
            if mirror:
                self.on_device[k][at[0], at[1]] = torch.as_tensor(v).to(self.device)
        if self.directory is not None:
            rows = self.total - 1 - (self.ptr - 1 - idx) % self.capacity  # (B, T'): the rows of those slots
            self.dirty.update(int(c) for c in np.unique(rows // self.chunk) if c < self.total // self.chunk)

    def flush(self) -> None:
        """Write again the chunk files whose rows `write` changed, those rows as the buffer holds them now. Makes
        the directory if no chunk has yet: a saved buffer has one."""
        if self.directory is not None:
            self._make_directory()
        for index in sorted(self.dirty):
            lo, hi = index * self.chunk, (index + 1) * self.chunk
            first = self.total - self.size  # the oldest row held
            if hi <= first:
                continue  # gone from the buffer: no run reads these rows again
            if lo >= first:
                arrays = {k: v[self._slots(lo, hi)] for k, v in self.data.items()}
            else:  # partly overwritten: the rows still held replace theirs in the file
                arrays = read_chunk(self._chunk_path(index))
                for k, v in self.data.items():
                    arrays[k][first - lo:] = v[self._slots(first, hi)]
            self._save_chunk(index, arrays)
        self.dirty.clear()

    def sample_tensors(self, batch_size: int, length: int,
                       rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """`sample`'s windows (the same for the same generator state), gathered from the copy on the buffer's
        device: tensors (batch_size, length, ...) there. Only the window indices travel from the host."""
        if self.device is None:
            raise ValueError("this replay keeps no copy on a device: sample() its arrays")
        return self._gather(*self._windows(batch_size, length, rng), on_device=True)

    def _windows(self, batch_size: int, length: int, rng: np.random.Generator | None,
                 given: list[tuple[int, int]] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Windows: their slots (B, T) and envs (B, 1). The `given` ones, as (first row, env), first; the rest
        uniform, drawn from `rng` (default: the buffer's own)."""
        if self.size < length:
            raise ValueError(f"replay holds {self.size} transitions, fewer than a sequence of {length}")
        # Valid windows never run across the write pointer, where old and new data meet.
        oldest = self.ptr if self.size == self.capacity else 0
        rng = self.rng if rng is None else rng
        n = batch_size - len(given)
        starts = oldest + rng.integers(0, self.size - length + 1, n)  # (n,)
        env = rng.integers(0, self.envs, (n, 1)) if self.envs > 1 else np.zeros((n, 1), int)  # (n, 1)
        if given:
            starts = np.concatenate([np.array([first for first, _ in given]), starts])  # (B,)
            env = np.concatenate([np.array([[e] for _, e in given], int), env])  # (B, 1)
        idx = (starts[:, None] + np.arange(length)) % self.capacity  # (B, T)
        return idx, env

    # Persistence.

    def _chunk_path(self, index: int) -> Path:
        return Path(self.directory) / f"chunk_{index:06d}.npz"

    def _slots(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop) % self.capacity

    def _write_chunk(self, index: int) -> None:
        slots = self._slots(index * self.chunk, (index + 1) * self.chunk)
        arrays = {k: v[slots] for k, v in self.data.items()}  # (chunk, envs, ...)
        try:
            self._save_chunk(index, arrays)
        except WriteFailed:
            self.dirty.add(index)  # `flush` writes it with the next checkpoint, which needs it
            raise

    def _save_chunk(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        self._make_directory()
        atomic_write(self._chunk_path(index), lambda f: write_chunk(f, arrays))

    def _make_directory(self) -> None:
        """The directory is made when the buffer first writes to it (a chunk, or `flush` before a checkpoint), not
        when it is built: a resume that is refused makes none."""
        with writing(self.directory):
            Path(self.directory).mkdir(parents=True, exist_ok=True)

    def state_dict(self) -> dict:
        """Counters, the sampling RNG, the online queue and the rows after the last full chunk (numpy arrays);
        `saved` is False, and the tail empty, for a buffer without a directory. The chunk files describe the rest
        once `flush` has run."""
        queue = [list(w) for w in self.queue]
        if self.directory is None:
            return {"total": self.total, "rng": self.rng.bit_generator.state, "tail": {}, "saved": False,
                    "queue": queue}
        start = self.total - self.total % self.chunk
        tail = {k: v[self._slots(start, self.total)] for k, v in self.data.items()}
        return {"total": self.total, "rng": self.rng.bit_generator.state, "tail": tail, "saved": True, "queue": queue}

    def load_state_dict(self, state: dict) -> None:
        """Refill the buffer from the chunk files and the saved tail: each chunk is read, checked against the
        tail's layout (`check_chunk`), copied into its slots and dropped, so loading needs the buffer's memory plus
        one chunk. Chunk files written after the checkpoint (by a run that went on, or was killed, after it) are
        deleted once every chunk is in. Raises UserError for the state of a buffer that was not saved, and for a
        chunk file that cannot be read or does not hold the run's rows."""
        if not state.get("saved", True):  # checkpoints from before `saved` always had their replay saved
            raise UserError("the checkpoint holds no replay: its run had replay.save=false")
        if self.directory is None:
            raise ValueError("a replay without a directory has no chunk files to load")
        total, tail = int(state["total"]), as_rows(state["tail"])
        first = max(0, total - self.capacity)  # oldest row the buffer holds
        full = total // self.chunk
        self.data, self.total, self.size = {}, total, total - first
        self.rng.bit_generator.state = state["rng"]
        self.queue, self.dirty = deque((int(a), int(b)) for a, b in state.get("queue", [])), set()
        # Every chunk holds `chunk` rows laid out as the tail's (the rows after them, saved by the same run).
        expected = layout(tail, rows=self.chunk) if tail else None
        for index in range(first // self.chunk, full):
            path = self._chunk_path(index)
            arrays = read_chunk(path)
            expected = expected or layout(arrays, rows=self.chunk)
            check_chunk(path, arrays, expected)
            if not self.data:
                self._allocate({k: v[0] for k, v in arrays.items()})
            lo = max(first, index * self.chunk)  # the chunk's part still in the buffer
            for k, v in arrays.items():
                self.data[k][self._slots(lo, (index + 1) * self.chunk)] = v[lo - index * self.chunk:]
        if not self.data and total > full * self.chunk:  # everything is in the tail
            self._allocate({k: np.asarray(v)[0] for k, v in tail.items()})
        for k, v in tail.items() if self.data else ():
            self.data[k][self._slots(full * self.chunk, total)] = v
        for path in _entries(self.directory):
            match = _CHUNK.fullmatch(path.name)
            if (match and int(match[1]) >= full) or path.name.endswith(".tmp"):
                path.unlink()
        self._mirror()

    def prune(self, total: int) -> None:
        """Delete chunk files that a checkpoint taken at `total` rows no longer needs."""
        if self.directory is None:
            return
        for path in _entries(self.directory):
            match = _CHUNK.fullmatch(path.name)
            if match and (int(match[1]) + 1) * self.chunk <= total - self.capacity:
                path.unlink()


def _entries(directory: Path) -> list[Path]:
    """What `directory` holds; nothing before its first chunk made it."""
    return list(Path(directory).iterdir()) if Path(directory).is_dir() else []


def write_chunk(file: IO[bytes], arrays: dict[str, np.ndarray], level: int = COMPRESS_LEVEL) -> None:
    """Write `arrays` to `file` as an .npz archive, each array deflated at zlib `level` (1-9; 0 stores them
    uncompressed, as np.savez does). `np.load` and `read_chunk` read either."""
    method = zipfile.ZIP_DEFLATED if level > 0 else zipfile.ZIP_STORED
    with zipfile.ZipFile(file, "w", compression=method, compresslevel=level if level > 0 else None) as archive:
        for k, v in arrays.items():
            with archive.open(f"{k}.npy", "w", force_zip64=True) as member:  # zip64: members may pass 2 GB
                np.lib.format.write_array(member, np.asarray(v), allow_pickle=False)


def read_chunk(path: Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The fields `keys` (default all, `is_first` always) of one chunk file, each (rows, envs, ...). Raises
    UserError if the file cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as chunk:
            return as_rows({k: chunk[k] for k in (chunk.files if keys is None else {"is_first", *keys})})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read replay chunk {path}: {str(e).splitlines()[0] if str(e) else repr(e)}") from None


def as_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored transitions as rows (n, envs, ...): files written before replays had an env axis hold (n, ...), and
    their `is_first` is (n,)."""
    if "is_first" in arrays and np.ndim(arrays["is_first"]) == 1:  # (n,): one env
        return {k: v[:, None] for k, v in arrays.items()}
    return arrays


Layout = dict[str, tuple[tuple[int, ...], np.dtype]]  # each field's shape (rows, envs, ...) and dtype


def layout(arrays: dict[str, np.ndarray], rows: int | None = None) -> Layout:
    """The shape and dtype of each field of `arrays` (n, envs, ...), with `rows` rows in place of n if given."""
    return {k: (np.shape(v) if rows is None else (rows, *np.shape(v)[1:]), np.asarray(v).dtype)
            for k, v in arrays.items()}


def check_chunk(path: Path, arrays: dict[str, np.ndarray], expected: Layout, doing: str = "resume from",
                whose: str = "the run's") -> None:
    """Raise UserError naming the chunk file `path` where its `arrays` (as `read_chunk` gives them) differ from
    the `expected` layout: a field missing or extra, of another shape or dtype, or a float field of the data (an
    observation, the action, the reward) with a value that is not finite. The model states a replay context
    stores (`latent_*`) are the run's own computation, not data: a non-finite one is what the run left there.
    One pass over each field."""

    def refuse(problem: str) -> None:
        raise UserError(f"cannot {doing} replay chunk {path}: {problem}")

    if missing := sorted(expected.keys() - arrays.keys()):
        refuse(f"it lacks {_names(missing)}, which {whose} rows hold")
    if extra := sorted(arrays.keys() - expected.keys()):
        refuse(f"it holds {_names(extra)}, which {whose} rows do not")
    for k, (shape, dtype) in expected.items():
        v = arrays[k]
        if v.shape != shape:
            refuse(f"its '{k}' has shape {v.shape}, {whose} is {shape}")
        if v.dtype != dtype:
            refuse(f"its '{k}' is {v.dtype}, {whose} is {dtype}")
        if np.issubdtype(v.dtype, np.floating) and not k.startswith("latent_"):
            bad = v.size - np.count_nonzero(np.isfinite(v))
            if bad:
                refuse(f"its '{k}' is not finite: {bad} of its {v.size} values are NaN or inf")


def _names(keys: list[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys)
