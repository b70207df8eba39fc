"""Playing episodes with a trained agent, and `rssm-eval RUN_DIR`: returns to JSON, optionally a video."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

from rssm.agent import Agent, NonFiniteModel
from rssm.api import load
from rssm.build import build_envs, env_id, resolve_device
from rssm.checkpoint import seeded
from rssm.collector import Collector
from rssm.config import UserError
from rssm.envs import EnvSpec, close_env, install
from rssm.files import atomic_write
from rssm.flags import Parser, integer
from rssm.loggers import encode_gif
from rssm.run_state import ForcedStop, StopRequested


def run_episodes(agent, envs, spec: EnvSpec, episodes: int, seed: int, explore: bool = False, record: bool = False,
                 remake: Callable[[], gym.vector.VectorEnv] | None = None, stop: StopRequested | None = None,
                 step_timeout: float | None = None) -> tuple[list[float], list[np.ndarray]] | None:
    """Play `episodes` episodes on a vector env of N envs, each playing ceil(episodes / N) of them (taking the
    first episodes to finish would favour short ones). Returns their returns and, if `record`, the rgb frames
    of env 0's first episode. With `remake`, envs that fail are replaced as in training (`Collector`), and
    envs made that way are closed here; `envs` is the caller's to close. With `stop`, it is asked between env
    steps, and the evaluation is abandoned (None) once it says yes; a second signal while the envs do not return
    raises ForcedStop (`StopRequested.waiting`). `step_timeout`: as `Collector`'s."""
    collector = Collector(envs, spec, seed, remake=remake, step_timeout=step_timeout)
    try:
        return _play(agent, collector, episodes, explore, record, stop)
    except ForcedStop:
        collector.close(force=True)  # its workers may hang: the caller's close must not wait on them
        raise
    finally:
        if collector.envs is not envs:
            collector.close()


def _play(agent, collector: Collector, episodes: int, explore: bool, record: bool,
          stop: StopRequested | None) -> tuple[list[float], list[np.ndarray]] | None:
    quota = -(-episodes // collector.num)
    played: list[list[float]] = [[] for _ in range(collector.num)]  # returns per env, in order
    frames, state = [], None
    actions = np.zeros((collector.num, collector.spec.action_dim), np.float32)
    while min(len(r) for r in played) < quota:
        if stop is not None and stop():
            return None
        failures = collector.failures
        with stop.waiting() if stop is not None else nullcontext():
            transitions, finished = collector.step(actions)
        if collector.failures != failures:  # a restarted env drops its episode, and a recording's frames
            frames = [] if not played[0] else frames
        if record and not played[0]:
            frames.append(np.asarray(collector.envs.call("render")[0]))
        for i, episode in zip(np.flatnonzero(collector.done), finished, strict=True):
            played[i].append(episode["return"])
        actions, state = agent.act(transitions, state, explore)
    returns = [r[k] for k in range(quota) for r in played][:episodes]
    return returns, frames


def evaluation_seed(seed: int, steps: int) -> int:
    """The seed of the episodes of a run's evaluation at env step `steps`. Each evaluation draws starts of its own,
    as DreamerV3's and stable-baselines3's evaluations play new episodes each time: a run that kept one set of
    starts throughout was judged by how hard those few starts happened to be (Pendulum-v1: on the 10 starts kept
    by seeds 0, 1 and 2, the best return possible was -132, -137 and -172; scripts/pendulum_optimum.py)."""
    return int(np.random.SeedSequence([seed + 10_000, steps]).generate_state(1)[0] >> 1)


def evaluate_policy(agent: Agent, cfg: DictConfig, episodes: int, steps: int = 0,
                    stop: StopRequested | None = None) -> dict[str, float] | None:
    """Mean and spread of the policy's returns (its mode, or its samples with `trainer.eval_policy=sample`), on a
    fresh env playing its episodes one after another (restarted if it fails, as in training). None if `stop()`
    said yes between two env steps. Each evaluation plays episodes of its own, started from
    `evaluation_seed(cfg.seed, steps)`, and samples the model's latents and actions from random numbers of its own:
    training goes on the same whether an evaluation ran, and one redone after a resume gives the same result."""
    envs, spec = build_envs(cfg, num=1)
    try:
        with seeded(cfg.seed + 10_000 + steps, agent.device):
            played = run_episodes(agent, envs, spec, episodes, seed=evaluation_seed(cfg.seed, steps), stop=stop,
                                  explore=cfg.trainer.eval_policy == "sample", step_timeout=cfg.env.step_timeout,
                                  remake=lambda: build_envs(cfg, num=1)[0])
    finally:
        close_env(envs)
    if played is None:
        return None
    returns = played[0]
    return {"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
            "eval/return_min": float(np.min(returns)), "eval/return_max": float(np.max(returns))}


def load_run(run_dir: Path, device: str, policy: bool = True):
    """A run's config and agent, as `rssm.load` reads them (its checkpoint.pt, else model.pt and config.yaml: a
    finished or a stopped run). With `policy`, a run without an actor (agent=world_model) is refused.
    Raises UserError if the run is unusable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file: give an rssm run directory")
    resolve_device(device)  # a flag's device is the user's input: UserError, one line
    loaded = load(run_dir, device)
    if policy and loaded.policy is None:
        raise UserError(f"{run_dir} trained a world model alone (agent={loaded.config.agent.kind}): it has no policy "
                        f"to play")
    return loaded.config, loaded.agent


def save_video(frames: list[np.ndarray] | np.ndarray, path: Path, fps: float = 30) -> None:
    """Frames (H, W, C) uint8, C = 1 or 3, as an MP4 (a path ending in .mp4; encoded by moviepy, as gymnasium's
    RecordVideo does) or else an animated GIF that loops forever; written whole or not at all."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        atomic_write(path, lambda f: f.write(encode_gif(frames, fps)))
        return
    try:
        from moviepy.video.io.ImageSequenceClip import ImageSequenceClip
    except ImportError:
        raise UserError(f"an MP4 video ({path}) needs the moviepy package: {install('video')}; or write a .gif") \
            from None
    rgb = [np.repeat(f, 3, -1) if f.shape[-1] == 1 else f for f in (np.asarray(f, np.uint8) for f in frames)]
    partial = path.with_name(f".{path.stem}.partial.mp4")
    try:
        ImageSequenceClip(rgb, fps=fps).write_videofile(str(partial), logger=None)
        partial.replace(path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        partial.unlink(missing_ok=True)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="rssm-eval", description="Play a trained run's mode policy.")
    parser.add_argument("run_dir", type=Path, help="the run directory, finished or stopped")
    parser.add_argument("--episodes", type=integer(1), default=10)
    parser.add_argument("--seed", type=integer(0), default=12345)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: RUN_DIR/eval.json)")
    parser.add_argument("--video", type=Path, default=None, help="write the first episode as a video: an MP4 for a "
                        "name ending in .mp4 (the video extra, moviepy), else an animated GIF")
    args = parser.parse_args(argv)
    with StopRequested() as stop:  # Ctrl-C or SIGTERM: the episodes stop; a file being written is finished first
        try:
            played = _evaluate(args, stop)
            if played is None:
                _stopped(stop.signum, "while playing the episodes; nothing written")
            result, frames = played
            out = args.out or args.run_dir / "eval.json"
            atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
            if args.video is not None:
                save_video(frames, args.video, fps=30)
        except UserError as e:
            print(f"rssm-eval: error: {e}", file=sys.stderr)
            sys.exit(2)
        except NonFiniteModel as e:
            print(f"rssm-eval: {args.run_dir}: {e}", file=sys.stderr)
            sys.exit(1)
        except ForcedStop as e:
            _stopped(e.signum, "while waiting on the env (a second signal); nothing written")
    print(f"rssm-eval: {result['env']} mean return {result['mean']:.1f} +- {result['std']:.1f} over "
          f"{len(result['returns'])} episodes -> {out}")
    if stop.signum:
        _stopped(stop.signum, "after its files were written")


def _stopped(signum: int, when: str) -> None:
    print(f"rssm-eval: stopped by {signal.Signals(signum).name} {when}", file=sys.stderr)
    sys.exit(128 + signum)


def _evaluate(args: argparse.Namespace, stop: StopRequested) -> tuple[dict, list[np.ndarray]] | None:
    """The JSON result of `rssm-eval`'s episodes and the recorded frames; None if `stop` said yes. Raises
    UserError for bad input."""
    for path in (args.out, args.video):  # checked before the episodes are played, not after
        if path is not None and not path.parent.is_dir():
            raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    cfg, agent = load_run(args.run_dir, args.device)
    render_mode = "rgb_array" if args.video else None
    envs, spec = build_envs(cfg, num=1, render_mode=render_mode)
    try:
        played = run_episodes(agent, envs, spec, args.episodes, args.seed, record=args.video is not None,
                              remake=lambda: build_envs(cfg, num=1, render_mode=render_mode)[0], stop=stop,
                              step_timeout=cfg.env.step_timeout)
    finally:
        close_env(envs)
    if played is None:
        return None
    returns, frames = played
    result = {"env": env_id(cfg), "episodes": len(returns), "returns": returns,
              "mean": float(np.mean(returns)), "std": float(np.std(returns))}
    return result, frames


if __name__ == "__main__":
    main()
