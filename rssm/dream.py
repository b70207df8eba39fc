"""`rssm-dream RUN_DIR`: an animated GIF of what a finished run's world model predicts, on sequences of its replay.

Each sequence is a stretch of consecutive transitions from `RUN_DIR/replay/chunk_*.npz` in which no episode starts
after the first step. The posterior sees its first `--context` frames, then the prior rolls on alone for
`--horizon` frames under the recorded actions (`rssm.openloop.open_loop_video`): truth | prediction | error, under
a header that names the panels and marks where the context ends (`rssm.openloop.label_video`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from rssm.agent import to_torch
from rssm.config import UserError
from rssm.evaluate import load_run, save_video
from rssm.flags import Parser, integer, number
from rssm.openloop import label_video, open_loop_video
from rssm.replay import chunk_files, chunk_streams, read_chunk


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


def replay_sequences(replay_dir: Path, length: int, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Up to `count` windows of `length` consecutive transitions of one env from the chunk files in `replay_dir`,
    each within one episode, drawn uniformly without replacement and kept in replay order. Chunk files with
    consecutive indices hold consecutive rows, so a window may span them; a missing index breaks the stream.

    Returns:
        Each field (S, length, ...) with S = min(count, windows there are), `is_first` set on the first step.
    Raises:
        UserError: no chunk files, an unreadable one, or no stretch of `length` steps within one episode.
    """
    files = chunk_files(replay_dir)
    if not files:
        raise UserError(f"{replay_dir} holds no replay chunks (chunk_*.npz)")
    pools, longest = [], 0  # (run, env, chunk bounds (chunks + 1,), window starts) for each run and env
    for run in chunk_streams(files):
        firsts = [read_chunk(files[i], ["is_first"])["is_first"] for i in run]  # each (rows, envs)
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
                cache[i] = read_chunk(files[i])
        parts = [cache[i] for i in run[first:last + 1]]
        lo = start - int(bounds[first])
        windows.append({k: np.concatenate([c[k] for c in parts])[lo:lo + length, env]  # (length, ...)
                        for k in parts[0]})
    batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}  # (S, length, ...)
    batch["is_first"][:, 0] = True  # the model starts each window from its initial state
    return batch


def dream(run_dir: Path, context: int, horizon: int, sequences: int = 4, seed: int = 0, key: str | None = None,
          device: str = "cpu") -> tuple[str, int, np.ndarray]:
    """The open-loop video of a finished run (any agent) on sequences of its replay.

    Returns:
        The image key drawn, the number S of sequences (fewer than `sequences` if the replay has fewer), and the
        frames (context + horizon, S * H, 3 * W, C) uint8 of `open_loop_video`.
    Raises:
        UserError: the run, its replay or the arguments cannot give a video.
    """
    for name, value in (("--context", context), ("--horizon", horizon), ("--sequences", sequences)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    cfg, agent = load_run(run_dir, device, policy=False)
    if not cfg.replay.save:
        raise UserError(f"{run_dir} has no replay to draw from: the run had replay.save=false")
    wm = agent.wm
    if not wm.image_keys:
        raise UserError(f"{run_dir}'s world model has no image observations (it models {', '.join(wm.obs_keys)}): "
                        f"there is no picture to draw")
    key = wm.image_keys[0] if key is None else key
    if key not in wm.image_keys:
        raise UserError(f"--key {key} is not an image key of the world model ({', '.join(wm.image_keys)})")
    replay = run_dir / "replay"
    replay = replay / "rank_0" if (replay / "rank_0").is_dir() else replay  # a torchrun job's: rank 0's shard
    if not chunk_files(replay):
        raise UserError(f"{replay} holds no replay chunks (chunk_*.npz): a run writes one every "
                        f"replay.chunk={cfg.replay.chunk} transitions")
    rng = np.random.default_rng(seed)
    batch = to_torch(replay_sequences(replay, context + horizon, sequences, rng), agent.device)
    torch.manual_seed(seed)  # the sampled latents
    return key, len(batch["is_first"]), open_loop_video(wm, batch, context, horizon, sequences, key)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="rssm-dream", description="Draw what a finished run's world model predicts on sequences of its replay: "
        "truth | prediction | error, the posterior's reconstruction over the context, then the prior alone.")
    parser.add_argument("run_dir", type=Path, help="the run directory (holds config.yaml, model.pt and replay/)")
    parser.add_argument("--context", type=integer(1), default=5, help="frames the posterior sees")
    parser.add_argument("--horizon", type=integer(1), default=45, help="frames the prior predicts after them")
    parser.add_argument("--sequences", type=integer(1), default=4, help="sequences, stacked top to bottom")
    parser.add_argument("--key", default=None, help="the image key to draw (default: the first)")
    parser.add_argument("--out", type=Path, default=None, help="the video (default: RUN_DIR/dream.gif; a name "
                        "ending in .mp4: an MP4)")
    parser.add_argument("--fps", type=number(positive=True), default=10.0)
    parser.add_argument("--seed", type=integer(0), default=0, help="picks the sequences and the sampled latents")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "dream.gif"
    try:
        key, shown, frames = dream(args.run_dir, args.context, args.horizon, args.sequences, args.seed, args.key,
                                   args.device)
        try:
            save_video(label_video(frames, args.context), out, args.fps)
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    except UserError as e:
        print(f"rssm-dream: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"rssm-dream: '{key}', {shown} sequences x ({args.context} seen + {args.horizon} predicted frames) "
          f"-> {out}")


if __name__ == "__main__":
    main()
