"""Learning benchmark: train an env's default config for several seeds, then report for each seed the first
env step at which the mean eval return reached the target, the wall-clock, and a plot of all seeds.

    python scripts/learning_benchmark.py --env cartpole --target 475 --seeds 0 1 2 --out runs/bench
    python scripts/learning_benchmark.py --env pendulum --target -200 --seeds 0 1 2 --out runs/bench

Extra arguments after `--` go to rssm-train as overrides. `--jobs N` runs N seeds at a time, each with
`threads=cores/N` (torch runs that share cores with more threads than cores slow down many times over), or with
`threads=1` each on the cores `--cpus` pins them to (taskset -c). Started again with the same arguments, it
continues each seed's run where it stopped (`rssm-train resume=RUN_DIR`) and leaves a finished one (its model.pt
written) as it is, so that runs longer than a sitting go on in the next (a continued run's wall-clock to target
counts from its first event, the time between sittings included). The plot needs matplotlib (`pip install -e
".[plot]"`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def first_reaching(run_dir: Path, tag: str, target: float) -> dict:
    """The first logged step at which `tag` reached `target`, the seconds from the run's start (its first
    TensorBoard event) to that point, and the last value logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars(tag) if tag in events.Tags()["scalars"] else []
    reached = next((p for p in points if p.value >= target), None)
    return {"steps_to_target": reached.step if reached else None,
            "wall_clock_to_target_s": round(reached.wall_time - events.FirstEventTimestamp(), 1) if reached else None,
            "final_eval_return": points[-1].value if points else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="an env config name, e.g. cartpole")
    parser.add_argument("--target", type=float, required=True, help="mean eval return to reach")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: OUT/ENV.png)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at the same time")
    parser.add_argument("--cpus", default=None, help="pin the runs to these CPUs (taskset -c), e.g. 1 or 0-3; "
                        "each run then has threads=1")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="end each run at the first eval that reaches the target (trainer.stop_return)")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    threads = 1 if args.cpus else max(1, (os.cpu_count() or 1) // args.jobs)
    pin = ["taskset", "-c", args.cpus] if args.cpus else []
    if args.stop_at_target:
        overrides = [f"trainer.stop_return={args.target}", *overrides]
    results, running = [], []

    def finish(seed, run_dir, proc, start):
        if proc is not None:
            proc.wait()
        results.append({"seed": seed, "exit": proc.returncode if proc else 0, "finished_before": proc is None,
                        "wall_clock_s": round(time.perf_counter() - start, 1),
                        **first_reaching(run_dir, "eval/return_mean", args.target)})
        print(json.dumps(results[-1]), flush=True)

    for seed in args.seeds:
        if len(running) == args.jobs:
            finish(*running.pop(0))
        run_dir = args.out / f"{args.env}_seed{seed}"
        if (run_dir / "model.pt").is_file():  # finished in an earlier sitting
            finish(seed, run_dir, None, time.perf_counter())
            continue
        if (run_dir / "checkpoint.pt").is_file():
            cmd = [*pin, "rssm-train", f"resume={run_dir}", f"threads={threads}", "trainer.progress=false"]
        else:
            cmd = [*pin, "rssm-train", f"env={args.env}", f"seed={seed}", f"threads={threads}",
                   "trainer.progress=false", f"hydra.run.dir={run_dir}", *overrides]
        running.append((seed, run_dir, subprocess.Popen(cmd), time.perf_counter()))
    for job in running:
        finish(*job)
    summary = {"env": args.env, "target": args.target, "overrides": overrides, "runs": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.env}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot = args.plot or args.out / f"{args.env}.png"
    subprocess.run([sys.executable, "-m", "rssm.plot", *(str(args.out / f"{args.env}_seed{s}") for s in args.seeds),
                    "--each", "--out", str(plot), "--title", args.env, "--target", str(args.target)], check=False)


if __name__ == "__main__":
    main()
