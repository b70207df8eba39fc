"""Playing episodes with a trained agent, and `rssm-eval RUN_DIR`: returns to JSON, optionally a video."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
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
from rssm.messages import first_line, say
from rssm.run_state import ForcedStop, StopRequested

VIDEO_FPS = 30  # of rssm-eval's videos and of the evaluations' videos in the logs
VIDEO_FRAMES = 500  # an evaluation's video in the logs: at most this many frames, from its episode's start ...
VIDEO_SIDE = 128  # ... each at most this many pixels on its longer side (a MuJoCo frame of 480 x 480 is 128 x 128)
# trainer.eval_video_every=null with image observations: every evaluation. The video is the observations that
# were played, so it costs its GIF alone (500 frames of CartPole at 64 x 64: 0.4 s to encode, 130 kB).
IMAGE_VIDEO_EVERY = 1


class Recording:
    """What `run_episodes` records of env 0's first episode: its first frame and one after each step, from
    `source`: "render", the env's `render()` (an env made with render_mode="rgb_array"), or an image
    observation key. At most `max_frames` frames, each scaled down (area average) to at most `max_side` pixels on
    its longer side. A frame that cannot be had (an env that cannot render) raises UserError, or with `strict`
    false ends the recording with its reason in `problem`."""

    def __init__(self, source: str = "render", max_frames: int | None = None, max_side: int | None = None,
                 strict: bool = True):
        self.source, self.max_frames, self.max_side, self.strict = source, max_frames, max_side, strict
        self.frames: list[np.ndarray] = []  # (H, W, C) uint8 each
        self.problem: str | None = None

    def add(self, envs: gym.vector.VectorEnv, transitions: dict[str, np.ndarray]) -> None:
        if self.problem is not None or (self.max_frames is not None and len(self.frames) >= self.max_frames):
            return
        try:
            frame = envs.call("render")[0] if self.source == "render" else transitions[self.source][0]
        except Exception as e:  # noqa: BLE001 - whatever the env's renderer raises
            self.fail(f"render() raised {first_line(e, typed=True)}")
            return
        # render() returns None for an env made without a render mode it knows.
        array = None if frame is None else np.asarray(frame)
        if array is None or array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            self.fail(f"render() returned {'None' if array is None else f'an array {array.shape} {array.dtype}'}, "
                      f"not an rgb_array frame (H, W, 3) uint8")
            return
        self.frames.append(_shrunk(array[..., :3], self.max_side))  # an alpha channel dropped

    def fail(self, problem: str) -> None:
        """No video: raise UserError, or with `strict` false, note the `problem`."""
        if self.strict:
            raise UserError(f"cannot record a video: {problem}")
        self.problem, self.frames = problem, []

    def video(self) -> np.ndarray | None:
        """The frames as one (T, H, W, C) uint8 array; None for none."""
        return np.stack(self.frames) if self.frames else None


def _shrunk(frame: np.ndarray, side: int | None) -> np.ndarray:
    """`frame` (H, W, C) uint8 scaled down to at most `side` pixels on its longer side (area average)."""
    H, W, C = frame.shape
    if side is None or max(H, W) <= side:
        return frame.copy()  # a frame the env may reuse
    from PIL import Image

    scale = side / max(H, W)
    image = Image.fromarray(frame[..., 0] if C == 1 else frame)
    small = image.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.BOX)
    return np.asarray(small).reshape(small.height, small.width, C)  # (h, w, C)


class EvalVideos:
    """Which of a run's evaluations log their first episode as a video (`trainer.eval_video_every`), and from
    what: the first image observation key of `image_keys`, else the env's render() frames. The video is for the
    logs alone: what an evaluation returns and the run's random numbers are the same with it or without."""

    def __init__(self, cfg: DictConfig, image_keys: list[str]):
        every = cfg.trainer.eval_video_every
        self.every = (IMAGE_VIDEO_EVERY if image_keys else 0) if every is None else every
        self.source = image_keys[0] if image_keys else "render"
        self.eval_every, self.steps, self.env = cfg.trainer.eval_every, cfg.trainer.steps, env_id(cfg)

    def recording(self, steps: int) -> Recording | None:
        """A recording for the evaluation at env step `steps` if it is one that logs a video: the first, every
        N-th after it (counted by the multiples of `trainer.eval_every` reached) and the run's last."""
        k = steps // self.eval_every if self.eval_every else 0  # the evaluation's number, from 1
        due = self.every > 0 and (steps >= self.steps or (k >= 1 and (k - 1) % self.every == 0))
        return Recording(self.source, VIDEO_FRAMES, VIDEO_SIDE, strict=False) if due else None

    def video(self, recording: Recording) -> np.ndarray | None:
        """The recorded video (T, H, W, C) uint8, or None. An env that could not render is said in one line, and
        the run's later evaluations record none."""
        if recording.problem is not None:
            say(f"rssm: warning: trainer.eval_video_every={self.every}: {self.env} cannot give video frames "
                f"({recording.problem}); the run logs no eval video")
            self.every = 0
        return recording.video()


def run_episodes(agent, envs, spec: EnvSpec, episodes: int, seed: int, explore: bool = False,
                 record: Recording | None = None, remake: Callable[[], gym.vector.VectorEnv] | None = None,
                 stop: StopRequested | None = None,
                 step_timeout: float | None = None) -> tuple[list[float], list[np.ndarray]] | None:
    """Play `episodes` episodes on a vector env of N envs, each playing ceil(episodes / N) of them (taking the
    first episodes to finish would favour short ones). Returns their returns and, with `record`, the frames it
    recorded of env 0's first episode (also in `record.frames`). With `remake`, envs that fail are replaced as in
    training (`Collector`), and envs made that way are closed here; `envs` is the caller's to close. With `stop`,
    it is asked between env steps, and the evaluation is abandoned (None) once it says yes; a second signal while
    the envs do not return raises ForcedStop (`StopRequested.waiting`). `step_timeout`: as `Collector`'s."""
    collector = Collector(envs, spec, seed, remake=remake, step_timeout=step_timeout)
    try:
        return _play(agent, collector, episodes, explore, record, stop)
    except ForcedStop:
        collector.close(force=True)  # its workers may hang: the caller's close must not wait on them
        raise
    finally:
        if collector.envs is not envs:
            collector.close()


def _play(agent, collector: Collector, episodes: int, explore: bool, record: Recording | None,
          stop: StopRequested | None) -> tuple[list[float], list[np.ndarray]] | None:
    quota = -(-episodes // collector.num)
    played: list[list[float]] = [[] for _ in range(collector.num)]  # returns per env, in order
    state = None
    actions = np.zeros((collector.num, collector.spec.action_dim), np.float32)
    while min(len(r) for r in played) < quota:
        if stop is not None and stop():
            return None
        failures = collector.failures
        with stop.waiting() if stop is not None else nullcontext():
            transitions, finished = collector.step(actions)
        if record is not None and not played[0]:
            if collector.failures != failures:  # a restarted env drops its episode, and a recording's frames
                record.frames = []
            record.add(collector.envs, transitions)
        for i, episode in zip(np.flatnonzero(collector.done), finished, strict=True):
            played[i].append(episode["return"])
        actions, state = agent.act(transitions, state, explore)
    returns = [r[k] for k in range(quota) for r in played][:episodes]
    return returns, record.frames if record is not None else []


def evaluation_seed(seed: int, steps: int) -> int:
    """The seed of the episodes of a run's evaluation at env step `steps`. Each evaluation draws starts of its own,
    as DreamerV3's and stable-baselines3's evaluations play new episodes each time: a run that kept one set of
    starts throughout was judged by how hard those few starts happened to be (Pendulum-v1: on the 10 starts kept
    by seeds 0, 1 and 2, the best return possible was -132, -137 and -172; scripts/pendulum_optimum.py)."""
    return int(np.random.SeedSequence([seed + 10_000, steps]).generate_state(1)[0] >> 1)


def evaluate_policy(agent: Agent, cfg: DictConfig, episodes: int, steps: int = 0,
                    stop: StopRequested | None = None, record: Recording | None = None) -> dict[str, float] | None:
    """Mean and spread of the policy's returns (its mode, or its samples with `trainer.eval_policy=sample`), on a
    fresh env playing its episodes one after another (restarted if it fails, as in training). None if `stop()`
    said yes between two env steps. Each evaluation plays episodes of its own, started from
    `evaluation_seed(cfg.seed, steps)`, and samples the model's latents and actions from random numbers of its own:
    training goes on the same whether an evaluation ran, and one redone after a resume gives the same result.
    With `record`, the first episode's frames go to it (from render(): the env is made with
    render_mode="rgb_array"); the returns are the same."""
    render_mode = "rgb_array" if record is not None and record.source == "render" else None
    envs, spec = _eval_envs(cfg, render_mode, record)
    try:
        with seeded(cfg.seed + 10_000 + steps, agent.device):
            played = run_episodes(agent, envs, spec, episodes, seed=evaluation_seed(cfg.seed, steps), stop=stop,
                                  explore=cfg.trainer.eval_policy == "sample", step_timeout=cfg.env.step_timeout,
                                  remake=lambda: build_envs(cfg, num=1, render_mode=render_mode)[0], record=record)
    finally:
        close_env(envs)
    if played is None:
        return None
    returns = played[0]
    return {"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
            "eval/return_min": float(np.min(returns)), "eval/return_max": float(np.max(returns))}


def _eval_envs(cfg: DictConfig, render_mode: str | None, record: Recording | None):
    """One env of the config, and its EnvSpec, made with `render_mode`; an env whose render modes lack it fails
    `record` (its render() would give no frames). gymnasium's own warning about the mode is left out: `record`
    says it once (a non-strict recording: `EvalVideos.video`)."""
    if render_mode is None:
        return build_envs(cfg, num=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*render_mode.*")
        envs, spec = build_envs(cfg, num=1, render_mode=render_mode)
    modes = (envs.metadata or {}).get("render_modes") or []
    if render_mode not in modes:
        try:
            record.fail(f"its render modes are {list(modes)}, not {render_mode}")
        except UserError:
            close_env(envs)
            raise
    return envs, spec


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


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="rssm-eval", description="Play a trained run's mode policy.")
    parser.add_argument("run_dir", type=Path, help="the run directory, finished or stopped")
    parser.add_argument("--episodes", type=integer(1), default=10,
                        help="episodes played; their mean return and its std are printed (default: %(default)s)")
    parser.add_argument("--seed", type=integer(0), default=12345,
                        help="seeds the episodes' resets, so a rerun plays the same episodes (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the policy runs: cpu, cuda, cuda:N or auto "
                        "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file of the returns, their mean and std (default: RUN_DIR/eval.json)")
    parser.add_argument("--video", type=Path, default=None, help="write the first episode as a video: an MP4 for a "
                        "name ending in .mp4 (the video extra, moviepy), else an animated GIF (default: none)")
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
                save_video(frames, args.video, fps=VIDEO_FPS)
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
    record = Recording() if args.video is not None else None
    render_mode = "rgb_array" if record is not None else None
    envs, spec = _eval_envs(cfg, render_mode, record)
    try:
        played = run_episodes(agent, envs, spec, args.episodes, args.seed, record=record,
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
