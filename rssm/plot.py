"""`rssm-plot RUNS... --tag eval/return_mean --out curve.png`: a scalar of runs against env steps, in groups.

A RUN is a run directory, whose TensorBoard scalar `--tag` is read, or a CSV file with the columns `step,value`
(a header line; lines starting with `#` are comments), e.g. scores that `scripts/parity.py scores` wrote for a run
of another implementation. Several runs (seeds) are drawn as one line, their mean (or their interquartile mean, as
rliable reports it) at each env step where two or more runs have a value, with a 95% bootstrap confidence band over
the runs (the runs drawn with replacement); `--each` draws one line per run instead. The positional RUNS are one
group (named by `--label`); `--group LABEL RUN [RUN ...]`, repeatable, adds another, each its own line, band,
colour and legend entry:

    rssm-plot --group official off/seed_0.csv off/seed_1.csv --group rssm rssm/seed_0.csv rssm/seed_1.csv \
        --ylabel return --out parity.png

Written as PNG and SVG (`--out` names either). A published curve can go beside it: `--reference` takes a CSV of
`scripts/dreamerv3_scores.py` (task, step, score), its steps divided by `--reference-repeat` (DreamerV3's scores
count control steps, rssm agent steps).

Needs matplotlib (`pip install 'rssm[plot]'`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np

from rssm.config import UserError
from rssm.flags import Parser, integer, number


def read_scalar(run_dir: Path, tag: str) -> dict[int, float]:
    """The scalar `tag` of a run's TensorBoard events by env step (the last value where a step repeats).

    Raises:
        UserError: no events there, or none of `tag`.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A resumed run's events restart at its checkpoint's step: TensorBoard drops the older ones after it (as it
    # shows them) and says so in a warning per restart, which is no news here.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    if not run_dir.is_dir() or not any(run_dir.glob("events.out.tfevents.*")):
        raise UserError(f"{run_dir} holds no TensorBoard events (events.out.tfevents.*)")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        tags = ", ".join(sorted(t for t in events.Tags()["scalars"] if "/" in t)[:12])
        raise UserError(f"{run_dir} has no scalar '{tag}' (it has {tags}, ...)")
    return {p.step: p.value for p in events.Scalars(tag)}


def read_csv(path: Path) -> dict[int, float]:
    """A curve from a CSV file with the columns `step,value` (a header line; `#` lines are comments).

    Raises:
        UserError: the file cannot be read, lacks a column, or holds a step or value that is not a number.
    """
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        curve = {int(float(r["step"])): float(r["value"]) for r in rows}
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as e:
        raise UserError(f"cannot read {path} as a CSV of step,value (a header line, then numbers): "
                        f"{type(e).__name__}: {e}") from None
    if not curve:
        raise UserError(f"{path} holds no rows of step,value")
    return curve


def read_curve(run: Path, tag: str) -> dict[int, float]:
    """A run's curve: from a CSV file (`read_csv`), else the TensorBoard scalar `tag` of a run directory."""
    return read_csv(run) if run.is_file() else read_scalar(run, tag)


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean of the middle half of the sorted values (a quarter cut from
    each end, by whole values where the count divides by 4, else with fractional weights at the cuts)."""
    x = np.sort(values, axis=axis)
    n = x.shape[axis]
    ranks = np.arange(n)
    weights = np.clip(np.minimum(ranks + 1, 3 * n / 4) - np.maximum(ranks, n / 4), 0, 1)  # (n,): share kept
    shape = [1] * x.ndim
    shape[axis] = n
    return (x * weights.reshape(shape)).sum(axis) / weights.sum()


def aggregate(curves: list[dict[int, float]], statistic: str, samples: int = 2000,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs' `statistic` (mean or iqm) at each step where two or more runs have a value, and its 95% bootstrap
    confidence interval (runs drawn with replacement, `samples` times).

    Returns:
        steps (S,), the statistic (S,), the interval's low and high ends (S,).
    """
    fn = (lambda x: x.mean(-1)) if statistic == "mean" else iqm
    rng = np.random.default_rng(seed)
    steps = sorted(s for s in set().union(*curves) if sum(s in c for c in curves) >= 2)
    centre, low, high = [], [], []
    for step in steps:
        values = np.array([c[step] for c in curves if step in c])  # (n,)
        resampled = values[rng.integers(len(values), size=(samples, len(values)))]  # (samples, n)
        boot = fn(resampled)
        centre.append(fn(values[None])[0])
        low.append(np.percentile(boot, 2.5)), high.append(np.percentile(boot, 97.5))
    return np.array(steps), np.array(centre), np.array(low), np.array(high)


def read_reference(path: Path, task: str, repeat: int) -> tuple[list[float], list[float]]:
    try:
        with path.open() as f:
            rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#")) if r["task"] == task]
    except (OSError, KeyError) as e:
        raise UserError(f"cannot read {path} as a scores CSV (task, step, score): {e}") from None
    if not rows:
        raise UserError(f"no task '{task}' in {path}")
    return [int(r["step"]) / repeat for r in rows], [float(r["score"]) for r in rows]


def run_groups(args: argparse.Namespace) -> list[tuple[str, list[Path]]]:
    """The groups to draw, (label, runs) each: the positional runs (if any) first, then each `--group`.

    Raises:
        UserError: no runs at all, a `--group` without a run, or two groups of one label.
    """
    groups = [(args.label or "rssm", list(args.runs))] if args.runs else []
    for label, *runs in args.group or []:
        if not runs:
            raise UserError(f"--group {label} names no run: give --group LABEL RUN [RUN ...]")
        groups.append((label, [Path(r) for r in runs]))
    if not groups:
        raise UserError("no runs: give run directories or CSV files, or --group LABEL RUN [RUN ...]")
    labels = [label for label, _ in groups]
    if len(set(labels)) < len(labels):
        raise UserError(f"two groups have one label ({', '.join(labels)}): give each --group its own")
    return groups


def draw_group(ax, label: str, runs: list[Path], curves: list[dict[int, float]], args: argparse.Namespace,
               color: str | None, named: bool) -> bool:
    """One group's runs: a line per run (`--each`, or a group of one run), else the statistic with its band.
    `named`: the runs' lines say the group's label (the groups came from `--group`). Returns whether it drew a
    band."""
    if args.each or len(curves) == 1:
        for run, curve in zip(runs, curves, strict=True):
            name = f"{label}: {run.stem}" if named else run.name
            ax.plot(list(curve), list(curve.values()), marker="o", markersize=3, label=name, color=color)
        return False
    steps, centre, low, high = aggregate(curves, args.statistic)
    if not len(steps):
        raise UserError(f"the runs of '{label}' share no env step with a value: use --each")
    name = "mean" if args.statistic == "mean" else "IQM"
    line = ax.plot(steps, centre, marker="o", markersize=3, label=f"{label}: {name} of {len(curves)} runs",
                   color=color)[0]
    ax.fill_between(steps, low, high, alpha=0.25, color=line.get_color(),
                    label=None if color else "95% bootstrap CI")  # several groups: the legend's title says it
    return True


def plot(args: argparse.Namespace) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        raise UserError("rssm-plot needs matplotlib: pip install 'rssm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = run_groups(args)
    curves = {label: [read_curve(run, args.tag) for run in runs] for label, runs in groups}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if args.reference is not None:
        steps, values = read_reference(args.reference, args.reference_task, args.reference_repeat)
        ax.plot(steps, values, color="black", linestyle=":", label=f"DreamerV3 published ({args.reference_task})")
    bands = []
    for i, (label, runs) in enumerate(groups):
        # One group keeps matplotlib's colour cycle (a colour per run with --each); several get a colour each.
        color = f"C{i}" if len(groups) > 1 else None
        bands.append(draw_group(ax, label, runs, curves[label], args, color, named=bool(args.group)))
    if args.target is not None:
        ax.axhline(args.target, color="gray", linestyle="--", linewidth=1)
    if args.ylim:
        ax.set_ylim(*args.ylim)
    if args.xmax:
        ax.set_xlim(0, args.xmax)
    ax.set(xlabel=args.xlabel, ylabel=args.ylabel or args.tag, title=args.title)
    ax.grid(alpha=0.3)
    title = "shaded: 95% bootstrap CI" if len(groups) > 1 and any(bands) else None
    ax.legend(fontsize=8, title=title, title_fontsize=8)
    fig.tight_layout()
    written = []
    for suffix in (".png", ".svg"):
        out = args.out.with_suffix(suffix)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out)
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
        written.append(out)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="rssm-plot", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("runs", nargs="*", type=Path,
                        help="run directories (hold the TensorBoard events) or CSV files (step,value): one group "
                        "(default: none; then give --group)")
    parser.add_argument("--group", nargs="+", action="append", metavar=("LABEL", "RUN"),
                        help="another group of runs, its label first (repeatable; default: none)")
    parser.add_argument("--tag", default="eval/return_mean",
                        help="the scalar read from TensorBoard runs (default: %(default)s)")
    parser.add_argument("--xlabel", default="env steps", help="the x axis' label (default: %(default)s)")
    parser.add_argument("--ylabel", default="", help="the y axis' label (default: the tag)")
    parser.add_argument("--out", type=Path, required=True, help="the plot: OUT.png and OUT.svg (required)")
    parser.add_argument("--statistic", choices=["mean", "iqm"], default="mean",
                        help="the line over the runs: their mean, or their interquartile mean (default: %(default)s)")
    parser.add_argument("--each", action="store_true", help="one line per run instead (default: off)")
    parser.add_argument("--label", default="", help="the positional runs' name in the legend (default: rssm)")
    parser.add_argument("--title", default="", help="the plot's title (default: none)")
    parser.add_argument("--target", type=number(), default=None,
                        help="draw a horizontal line at this value (default: none)")
    parser.add_argument("--ylim", type=number(), nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="y-axis range (default: matplotlib's)")
    parser.add_argument("--xmax", type=number(positive=True), default=None,
                        help="end of the x axis (default: the last step)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="CSV of a published curve (task, step, score) (default: none)")
    parser.add_argument("--reference-task", default="", help="its task, e.g. dmc_walker_walk (default: none)")
    parser.add_argument("--reference-repeat", type=integer(1), default=1,
                        help="its steps per env step here (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.ylim is not None and args.ylim[0] >= args.ylim[1]:
        parser.error(f"argument --ylim: LOW must be below HIGH, got {args.ylim[0]:g} {args.ylim[1]:g}")
    try:
        written = plot(args)
    except UserError as e:
        print(f"rssm-plot: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"rssm-plot: wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
