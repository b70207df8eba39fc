"""Data-parallel scaling: env steps/s and updates/s of a real training run at 1, 2, ... ranks under torchrun.

Each run is `torchrun --standalone --nproc-per-node=N -m rssm threads=1 ...` with the config the extra
arguments after `--` give. Its speed is read from the run's TensorBoard log (`perf/env_steps_per_s`, env steps of
all ranks; `perf/updates_per_s`, updates of each rank, all ranks updating together): every log window after the
prefill and one more window of warm-up, median over the windows of all repeats. Scaling efficiency is the env
steps/s at N ranks over N times those at one rank: a run of N ranks makes the updates of one rank per env step of
one rank, each on N times the data, so N ranks would ideally collect and learn N times as fast.

    python scripts/scaling_benchmark.py --ranks 1 2 --repeats 3 -- env=cartpole trainer.steps=3000

Runs side by side share the machine: give each rank a core of its own (here 2 ranks on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def windows(run_dir: Path, after: int) -> dict[str, list[float]]:
    """The speed metrics of the log windows that end after env step `after`."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag) if e.step > after]
            for tag in ("perf/env_steps_per_s", "perf/updates_per_s")}


def run(ranks: int, overrides: list[str], log_every: int, prefill: int, directory: Path) -> dict[str, list[float]]:
    run_dir = directory / f"ranks{ranks}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m",
               "rssm", "threads=1", "trainer.progress=false", f"trainer.log_every={log_every}",
               f"trainer.prefill={prefill}", "trainer.eval_every=0", "trainer.eval_episodes=1",
               "trainer.checkpoint_every=0", "replay.save=false", f"hydra.run.dir={run_dir}", *overrides]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run with {ranks} ranks failed:\n{done.stderr[-3000:]}")
    return windows(run_dir, prefill + log_every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=250, help="env steps of one measured window")
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    rows = []
    for ranks in args.ranks:
        steps, updates = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                found = run(ranks, overrides, args.log_every, args.prefill, Path(tmp))
            steps += found["perf/env_steps_per_s"]
            updates += found["perf/updates_per_s"]
        rows.append({"ranks": ranks, "env_steps_per_s": statistics.median(steps),
                     "updates_per_s": statistics.median(updates), "windows": len(steps)})
    base = next((r["env_steps_per_s"] for r in rows if r["ranks"] == 1), None)
    print(f"config: {' '.join(overrides) or '(defaults)'}; threads=1 per rank; median over log windows of "
          f"{args.log_every} env steps after the prefill, {args.repeats} runs each")
    print("| ranks | env steps/s (all ranks) | updates/s (each rank) | speed-up | efficiency |")
    print("|---|---|---|---|---|")
    for r in rows:
        gain = r["env_steps_per_s"] / base if base else float("nan")
        r.update(speedup=gain, efficiency=gain / r["ranks"])
        print(f"| {r['ranks']} | {r['env_steps_per_s']:.1f} | {r['updates_per_s']:.2f} | {gain:.2f}x | "
              f"{gain / r['ranks']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
