"""`rssm-dream RUN_DIR`: what a finished run's world model predicts, drawn on sequences of its replay.

Each sequence is a stretch of consecutive transitions from the run's replay (its chunk files and the rows after
them in its checkpoint, `rssm.replay_read`) in which no episode starts after the first step. The posterior sees
its first `--context` steps, then the prior rolls on alone for `--horizon` steps under the recorded actions.

- A run with image observations: an animated GIF (or MP4) of truth | prediction | error
  (`rssm.openloop.open_loop_video`), under a header that names the panels and marks where the context ends
  (`rssm.openloop.label_video`).
- A run of vectors alone: a figure with a column per sequence and a row per observation dimension, then the
  reward and the continue flag, each the truth against the prediction over time (`rssm.openloop.open_loop_curves`),
  a line where the context ends; a PNG, or an animated GIF in which the curves grow step by step. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from rssm.agent import to_torch
from rssm.build import continue_target
from rssm.checkpoint import CHECKPOINT
from rssm.config import UserError
from rssm.evaluate import load_run, save_video
from rssm.files import atomic_write
from rssm.flags import Parser, integer, number
from rssm.openloop import label_video, open_loop_curves, open_loop_video
from rssm.replay import chunk_files
from rssm.replay_read import checkpoint_tail, replay_dir, replay_sequences
from rssm.world_model import WorldModel


def dream_batch(run_dir: Path, context: int, horizon: int, sequences: int = 4, seed: int = 0, key: str | None = None,
                device: str = "cpu") -> tuple[DictConfig, WorldModel, str | None, dict[str, torch.Tensor]]:
    """A finished run (any agent) and up to `sequences` windows of `context + horizon` steps of its replay.

    Returns:
        The run's config, its world model, the image key to draw (None for a model of vectors alone) and the
        windows as tensors (S, context + horizon, ...) on the model's device; torch's seed is `seed` after.
    Raises:
        UserError: the run, its replay or the arguments cannot be drawn.
    """
    for name, value in (("--context", context), ("--horizon", horizon), ("--sequences", sequences)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    cfg, agent = load_run(run_dir, device, policy=False)
    if not cfg.replay.save:
        raise UserError(f"{run_dir} has no replay to draw from: the run had replay.save=false")
    wm = agent.wm
    if wm.image_keys:
        key = wm.image_keys[0] if key is None else key
        if key not in wm.image_keys:
            raise UserError(f"--key {key} is not an image key of the world model ({', '.join(wm.image_keys)})")
    elif key is not None and key not in wm.vector_keys:
        raise UserError(f"--key {key} is not an observation key of the world model ({', '.join(wm.vector_keys)})")
    replay = replay_dir(run_dir)
    tail = checkpoint_tail(run_dir / CHECKPOINT, cfg.replay.chunk)
    if not chunk_files(replay) and tail is None:
        raise UserError(f"{replay} holds no replay chunks (chunk_*.npz) and {run_dir} no {CHECKPOINT} with the rows "
                        f"after them: a run writes a chunk every replay.chunk={cfg.replay.chunk} transitions and "
                        f"keeps the rest in its checkpoint")
    rng = np.random.default_rng(seed)
    batch = to_torch(replay_sequences(replay, context + horizon, sequences, rng, tail), agent.device)
    torch.manual_seed(seed)  # the sampled latents
    return cfg, wm, key if wm.image_keys else None, batch


def curve_figure(names: list[str], truth: np.ndarray, pred: np.ndarray, context: int, dpi: int = 80):
    """A matplotlib figure of `open_loop_curves`: a column per sequence, a row per curve (named by `names`), in
    each the truth (black) and the prediction (orange) against the step, the context shaded green and a dashed
    line where it ends. Each axes' first two lines are the truth and the prediction (`curve_frames` moves them).

    Shapes:
        truth, pred: (S, N, T) with N = len(names).
    Raises:
        UserError: matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("rssm-dream needs matplotlib to draw a run of vector observations: pip install "
                        "'rssm[plot]'") from None
    S, N, T = truth.shape
    fig = Figure(figsize=(0.6 + 2.4 * S, 0.9 + 1.0 * N), dpi=dpi, layout="constrained")
    axes = fig.subplots(N, S, sharex=True, squeeze=False)  # (N, S)
    for (n, s), ax in np.ndenumerate(axes):
        ax.plot(truth[s, n], color="black", linewidth=1.2)
        ax.plot(pred[s, n], color="tab:orange", linewidth=1.2)
        ax.axvspan(-0.5, context - 0.5, color="tab:green", alpha=0.12, linewidth=0)
        ax.axvline(context - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(-0.5, T - 0.5)
        if names[n] == "continue":
            ax.set_ylim(-0.05, 1.05)
        ax.tick_params(labelsize=7)
        ax.set_title(f"sequence {s + 1}" if n == 0 else "", fontsize=9)
        ax.set_ylabel(names[n] if s == 0 else "", fontsize=8)
        ax.set_xlabel("step" if n == N - 1 else "", fontsize=8)
    fig.suptitle(f"model: the posterior's reconstruction over steps 0-{context - 1} (green), then the prior alone "
                 f"over steps {context}-{T - 1}", fontsize=9)
    fig.legend(axes[0, 0].get_lines()[:2], ["truth", "model"], loc="outside lower center", ncols=2, fontsize=8,
               frameon=False)
    return fig


def curve_frames(fig, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Frames of `curve_figure`'s figure in which the curves grow: frame t shows steps 0 to t, the axes keep the
    whole figure's limits and layout. Each frame redraws the curves alone over the rest, drawn once.

    Shapes:
        truth, pred: (S, N, T) -> (T, H, W, 3) uint8.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    S, N, T = truth.shape
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lay the figure out with all its data, then keep that layout
    fig.set_layout_engine("none")
    lines = [ax.get_lines()[:2] for ax in fig.axes]  # row by row: axes i is curve i // S of sequence i % S
    for line in (x for pair in lines for x in pair):
        line.set_animated(True)  # left out of the full draw: the background
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    frames = []
    for t in range(T):
        canvas.restore_region(background)
        for i, pair in enumerate(lines):
            n, s = divmod(i, S)
            for line, values in zip(pair, (truth, pred), strict=True):
                line.set_data(np.arange(t + 1), values[s, n, :t + 1])
                fig.axes[i].draw_artist(line)
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())  # (H, W, 3)
    return np.stack(frames)


def draw_curves(names: list[str], truth: np.ndarray, pred: np.ndarray, context: int, out: Path,
                fps: float = 10.0) -> None:
    """Write `curve_figure` to `out`: a PNG for a name ending in .png, else the growing curves (`curve_frames`) as
    `save_video` writes them (an MP4 for .mp4, else an animated GIF)."""
    fig = curve_figure(names, truth, pred, context)
    if out.suffix.lower() == ".png":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write(out, lambda f: f.write(buffer.getvalue()))
    else:
        save_video(curve_frames(fig, truth, pred), out, fps)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="rssm-dream", description="Draw what a finished run's world model predicts on sequences of its replay: "
        "the posterior's reconstruction over the context, then the prior alone over the horizon. A run with images: "
        "a video of truth | prediction | error. A run of vectors: each observation dimension, the reward and the "
        "continue flag, truth against prediction over time (a PNG, or a GIF of the curves growing; needs "
        "matplotlib: pip install 'rssm[plot]').")
    parser.add_argument("run_dir", type=Path, help="the run directory (holds config.yaml, model.pt or checkpoint.pt, "
                        "and replay/)")
    parser.add_argument("--context", type=integer(1), default=5,
                        help="steps the posterior sees, from the start of each sequence (default: %(default)s)")
    parser.add_argument("--horizon", type=integer(1), default=45,
                        help="steps the prior predicts alone after them; a sequence is --context + --horizon steps "
                        "within one episode (default: %(default)s)")
    parser.add_argument("--sequences", type=integer(1), default=4,
                        help="sequences drawn from the replay: stacked top to bottom in a video of images, side by "
                        "side as columns in a figure of vectors (default: %(default)s)")
    parser.add_argument("--key", default=None, help="the observation key to draw (default: the first image key; for "
                        "a run of vectors, every key)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the file to write (default: RUN_DIR/dream.gif for images, RUN_DIR/dream.png for "
                        "vectors); a name ending in .mp4: an MP4 (the video extra); for vectors, a name ending in "
                        ".png: a still figure, else a GIF of the curves growing")
    parser.add_argument("--fps", type=number(positive=True), default=10.0,
                        help="frames per second of a video (default: %(default)s)")
    parser.add_argument("--seed", type=integer(0), default=0,
                        help="picks the sequences and the sampled latents (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or auto "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        message = draw(args)
    except UserError as e:
        print(f"rssm-dream: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"rssm-dream: {message}")


def draw(args: argparse.Namespace) -> str:
    """Draw what `main`'s flags ask for; the line that says what was written where."""
    cfg, wm, key, batch = dream_batch(args.run_dir, args.context, args.horizon, args.sequences, args.seed, args.key,
                                      args.device)
    out = args.out or args.run_dir / ("dream.gif" if key is not None else "dream.png")
    shown = f"{len(batch['is_first'])} sequences x ({args.context} seen + {args.horizon} predicted"
    try:
        if key is not None:
            frames = open_loop_video(wm, batch, args.context, args.horizon, args.sequences, key)
            save_video(label_video(frames, args.context), out, args.fps)
            return f"'{key}', {shown} frames) -> {out}"
        keys = wm.vector_keys if args.key is None else [args.key]
        names, truth, pred = open_loop_curves(wm, batch, args.context, args.horizon, args.sequences, keys,
                                              continue_target(cfg))
        draw_curves(names, truth, pred, args.context, out, args.fps)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return f"{', '.join(map(repr, keys))} ({len(names) - 2} dimensions, reward and continue), {shown} steps) -> {out}"


if __name__ == "__main__":
    main()
