"""Replay chunks on disk: bytes per chunk and ms to write and to read one, per zlib level, on random-policy data.

For each env, one chunk of `--rows` rows is collected by a uniformly random policy (the `Collector`, as in
training). Each level then writes it as the training loop does (`write_chunk` through `atomic_write`: temporary
file, fsync, rename) and reads it back with `read_chunk` (from the page cache, as a resume right after a run
would); the median of `--repeats` is reported. Level 0 stores the arrays uncompressed (np.savez, the format before
compression), 6 is np.savez_compressed's level, 1 is what `rssm.replay` writes.

    python scripts/replay_benchmark.py
    python scripts/replay_benchmark.py --envs cartpole_pixels pong --levels 0 1 6 9 --repeats 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rssm.collector import Collector, make_envs
from rssm.config import UserError
from rssm.envs import atari_id, make_env, random_action
from rssm.files import atomic_write
from rssm.replay import Replay, read_chunk, write_chunk

ENVS = {"cartpole": lambda: make_env("CartPole-v1"), "cartpole_pixels": lambda: make_env("CartPole-v1", pixels=True),
        "pong": lambda: make_env(atari_id("pong"))}  # 64 x 64 x 3 frames for both image envs


def collect(name: str, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One chunk of random-policy transitions from the env `name`: each field (rows, 1, ...)."""
    env, spec = ENVS[name]()
    try:
        collector, rng = Collector(make_envs(lambda: env, 1), spec, seed), np.random.default_rng(seed)
        replay = Replay(rows, seed)
        for _ in range(rows):
            replay.add(collector.step(random_action(spec, rng))[0])
    finally:
        env.close()
    return replay.data


def bench(arrays: dict[str, np.ndarray], level: int, directory: Path, repeats: int) -> dict:
    path = directory / f"chunk_level{level}.npz"
    writes, reads = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        atomic_write(path, lambda f: write_chunk(f, arrays, level))
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        back = read_chunk(path)
        reads.append(time.perf_counter() - start)
    assert all(np.array_equal(back[k], v) for k, v in arrays.items()), "a chunk did not read back as written"
    return {"level": level, "bytes": path.stat().st_size, "write_ms": 1e3 * statistics.median(writes),
            "read_ms": 1e3 * statistics.median(reads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 6], help="zlib levels; 0: uncompressed")
    parser.add_argument("--rows", type=int, default=1024, help="rows per chunk (replay.chunk)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("."), help="write the chunks in a temporary folder here")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    results = []
    print(f"{args.rows}-row chunks, median of {args.repeats}")
    print(f"{'env':<16} {'level':>5} {'MB':>8} {'x smaller':>9} {'write ms':>9} {'read ms':>8}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="replay_benchmark_") as tmp:
        for name in args.envs:
            try:
                arrays = collect(name, args.rows)
            except UserError as e:  # e.g. ale-py without its ROMs
                print(f"{name:<16} skipped: {e}", flush=True)
                continue
            plain = sum(v.nbytes for v in arrays.values())
            for level in args.levels:
                r = {"env": name, **bench(arrays, level, Path(tmp), args.repeats)}
                results.append(r)
                print(f"{name:<16} {level:>5} {r['bytes'] / 1e6:8.3f} {plain / r['bytes']:9.1f} {r['write_ms']:9.1f} "
                      f"{r['read_ms']:8.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {**vars(args), "dir": str(args.dir)}, "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
