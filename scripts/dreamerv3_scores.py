"""Mean learning curve per task over its seeds, from a DreamerV3 scores file, as CSV (task, step, score).

DreamerV3 publishes its curves as gzipped JSON (scores/*-dreamerv3.json.gz in danijar/dreamerv3): a list of runs
{task, method, seed, xs, ys}, where xs are env steps as its logger counts them, agent steps times the action
repeat (DMC: repeat 2, so x is control steps), and ys are episode scores. Each seed's scores are averaged within
bins of `--every` steps (a bin is named by its upper end: x in (90,000, 100,000] is step 100,000), then the seeds
that have scores in a bin are averaged.

    python scripts/dreamerv3_scores.py dmc_proprio-dreamerv3.json.gz --tasks dmc_cartpole_swingup dmc_walker_walk \\
        --source "danijar/dreamerv3@e3f0224 scores/dmc_proprio-dreamerv3.json.gz" -o reference.csv

A first line `# source: ...` names the file the curves come from (read the CSV with comment="#").
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
from collections import defaultdict


def mean_curves(runs: list[dict], every: int) -> dict[str, list[tuple[int, float]]]:
    """Per task, (step, score) sorted by step: the mean over seeds of each seed's mean score in a bin."""
    per_seed = defaultdict(lambda: defaultdict(list))  # (task, seed) -> bin -> scores
    for run in runs:
        for x, y in zip(run["xs"], run["ys"], strict=True):
            per_seed[run["task"], run["seed"]][math.ceil(x / every) * every].append(y)
    seeds = defaultdict(lambda: defaultdict(list))  # task -> bin -> one mean per seed
    for (task, _), bins in per_seed.items():
        for step, scores in bins.items():
            seeds[task][step].append(sum(scores) / len(scores))
    return {task: [(step, sum(v) / len(v)) for step, v in sorted(bins.items())] for task, bins in seeds.items()}


def fail(message: str) -> None:
    """A problem with the input: one line on stderr, exit status 2."""
    print(f"dreamerv3_scores: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", help="a DreamerV3 scores file, e.g. dmc_proprio-dreamerv3.json.gz")
    parser.add_argument("--tasks", nargs="*", help="tasks to write, as the file names them (default: all)")
    parser.add_argument("--every", type=int, default=10_000, help="bin width in env steps (default 10,000)")
    parser.add_argument("--source", help="what to name as the source in the header line (default: the path)")
    parser.add_argument("-o", "--out", help="CSV file to write (default: stdout)")
    args = parser.parse_args()
    try:
        with gzip.open(args.scores, "rt") as f:
            runs = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {args.scores}: {e}")
    curves = mean_curves(runs, args.every)
    missing = sorted(set(args.tasks or []) - set(curves))
    if missing:
        fail(f"no task {', '.join(missing)} in {args.scores}; it has {', '.join(sorted(curves))}")
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        out.write(f"# source: {args.source or args.scores}; mean over seeds in bins of {args.every} env steps "
                  f"(agent steps x action repeat)\n")
        writer = csv.writer(out)
        writer.writerow(["task", "step", "score"])
        for task in args.tasks or sorted(curves):
            writer.writerows((task, step, f"{score:.1f}") for step, score in curves[task])
    finally:
        if args.out:
            out.close()


if __name__ == "__main__":
    main()
