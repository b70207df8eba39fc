"""Plot a TensorBoard scalar (default: eval return) against env steps for several runs, one line per run.

    python scripts/plot_curves.py RUN_DIR [RUN_DIR ...] --out docs/cartpole.png --title CartPole-v1
    python scripts/plot_curves.py RUN_DIR --out docs/walker.png --reference docs/dreamerv3_dmc_proprio_reference.csv \
        --reference-task dmc_walker_walk --reference-repeat 2

`--reference` draws a published curve from a CSV of `scripts/dreamerv3_scores.py` (task, step, score), its steps
divided by `--reference-repeat` (DreamerV3's scores count control steps; rssm's env steps are agent steps).

Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalar(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return [], []
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def read_reference(path: Path, task: str, repeat: int) -> tuple[list[float], list[float]]:
    with path.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#")) if r["task"] == task]
    if not rows:
        raise SystemExit(f"plot_curves: no task '{task}' in {path}")
    return [int(r["step"]) / repeat for r in rows], [float(r["score"]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (hold the TensorBoard events)")
    parser.add_argument("--tag", default="eval/return_mean")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--target", type=float, default=None, help="draw a horizontal line at this value")
    parser.add_argument("--ylim", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="y-axis range")
    parser.add_argument("--reference", type=Path, default=None, help="CSV of a published curve (task, step, score)")
    parser.add_argument("--reference-task", default="", help="its task, e.g. dmc_walker_walk")
    parser.add_argument("--reference-repeat", type=int, default=1, help="its steps per env step here")
    parser.add_argument("--xmax", type=float, default=None, help="end of the x axis")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if args.reference is not None:
        steps, values = read_reference(args.reference, args.reference_task, args.reference_repeat)
        ax.plot(steps, values, color="black", linestyle=":", label=f"DreamerV3 published ({args.reference_task})")
    for run in args.runs:
        steps, values = read_scalar(run, args.tag)
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=run.name)
    if args.target is not None:
        ax.axhline(args.target, color="gray", linestyle="--", linewidth=1)
    if args.ylim:
        ax.set_ylim(*args.ylim)
    if args.xmax:
        ax.set_xlim(0, args.xmax)
    ax.set_xlabel("env steps")
    ax.set_ylabel(args.tag)
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
