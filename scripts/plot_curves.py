"""Plot a TensorBoard scalar (default: eval return) against env steps for several runs, one line per run.

    python scripts/plot_curves.py RUN_DIR [RUN_DIR ...] --out docs/cartpole.png --title CartPole-v1

Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (hold the TensorBoard events)")
    parser.add_argument("--tag", default="eval/return_mean")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--target", type=float, default=None, help="draw a horizontal line at this value")
    parser.add_argument("--ylim", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="y-axis range")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for run in args.runs:
        steps, values = read_scalar(run, args.tag)
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=run.name)
    if args.target is not None:
        ax.axhline(args.target, color="gray", linestyle="--", linewidth=1)
    if args.ylim:
        ax.set_ylim(*args.ylim)
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
