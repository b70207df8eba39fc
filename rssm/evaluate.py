"""Playing episodes with a trained agent, and `rssm-eval RUN_DIR`: returns to JSON, optionally a video."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rssm.agent import NonFiniteModel
from rssm.build import build_agent, build_env, build_envs, env_id, resolve_device
from rssm.checkpoint import CHECKPOINT
from rssm.collector import Collector
from rssm.config import UserError, saved_run_config, validate
from rssm.envs import EnvSpec
from rssm.files import atomic_write
from rssm.logging import encode_gif


def run_episodes(agent, envs, spec: EnvSpec, episodes: int, seed: int, explore: bool = False, record: bool = False,
                 remake: Callable[[], gym.vector.VectorEnv] | None = None,
                 stop: Callable[[], bool] | None = None) -> tuple[list[float], list[np.ndarray]] | None:
    """Play `episodes` episodes on a vector env of N envs, each playing ceil(episodes / N) of them (taking the
    first episodes to finish would favour short ones). Returns their returns and, if `record`, the rgb frames
    of env 0's first episode. With `remake`, envs that fail are replaced as in training (`Collector`), and
    envs made that way are closed here; `envs` is the caller's to close. With `stop`, it is asked between env
    steps, and the evaluation is abandoned (None) once it says yes."""
    collector = Collector(envs, spec, seed, remake=remake)
    try:
        return _play(agent, collector, episodes, explore, record, stop)
    finally:
        if collector.envs is not envs:
            collector.envs.close()


def _play(agent, collector: Collector, episodes: int, explore: bool, record: bool,
          stop: Callable[[], bool] | None) -> tuple[list[float], list[np.ndarray]] | None:
    quota = -(-episodes // collector.num)
    played: list[list[float]] = [[] for _ in range(collector.num)]  # returns per env, in order
    frames, state = [], None
    actions = np.zeros((collector.num, collector.spec.action_dim), np.float32)
    while min(len(r) for r in played) < quota:
        if stop is not None and stop():
            return None
        failures = collector.failures
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


def save_gif(frames: list[np.ndarray] | np.ndarray, path: Path, fps: float = 30) -> None:
    """Frames (H, W, C) uint8, C = 1 or 3, as an animated GIF that loops forever."""
    Path(path).write_bytes(encode_gif(frames, fps))


def load_run(run_dir: Path, device: str, policy: bool = True):
    """Rebuild a finished run's agent from its `config.yaml` and `model.pt`: the world model, and the actor if
    the run trained one. With `policy`, a run without an actor (agent=world_model) is refused.
    Raises UserError if the run is unusable."""
    config_path, model_path = run_dir / "config.yaml", run_dir / "model.pt"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file: give an rssm run directory")
    if not model_path.is_file() and (run_dir / CHECKPOINT).is_file():
        raise UserError(f"{run_dir} holds a run that was stopped before it finished (a checkpoint, no model.pt): "
                        f"finish it with rssm-train resume={run_dir}, then evaluate it")
    for path in (config_path, model_path):
        if not path.is_file():
            raise UserError(f"{path} not found: is {run_dir} an rssm run directory?")
    # A key the run's version did not have means what it meant then (`saved_run_config`).
    try:
        cfg = saved_run_config(OmegaConf.to_container(OmegaConf.load(config_path)))
    except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError) as e:
        raise UserError(f"cannot read {config_path}: {_first_line(e)}") from None
    validate(cfg)
    if policy and cfg.agent.kind != "dreamer":
        raise UserError(f"{run_dir} trained a world model alone (agent={cfg.agent.kind}): it has no policy to play")
    env, spec = build_env(cfg)
    env.close()
    agent = build_agent(cfg, spec, resolve_device(device))
    try:
        state = torch.load(model_path, map_location=agent.device, weights_only=True)
    except (RuntimeError, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read {model_path} as a torch file ({_first_line(e)})") from None
    parts = ["world_model"] + (["actor"] if agent.actor is not None else [])
    if not isinstance(state, dict) or not set(parts) <= state.keys():
        raise UserError(f"cannot load {model_path}: it does not hold the run's {' and '.join(parts)} weights")
    try:
        agent.wm.load_state_dict(state["world_model"])
        if agent.actor is not None:
            agent.actor.load_state_dict(state["actor"])
    except (RuntimeError, TypeError) as e:
        raise UserError(f"cannot load {model_path}: {_first_line(e)}") from None
    return cfg, agent


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rssm-eval", description="Play a trained run's mode policy.")
    parser.add_argument("run_dir", type=Path, help="the run directory (holds config.yaml and model.pt)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: RUN_DIR/eval.json)")
    parser.add_argument("--video", type=Path, default=None, help="write the first episode as an animated GIF")
    args = parser.parse_args(argv)
    try:
        result, frames = _evaluate(args)
        out = args.out or args.run_dir / "eval.json"
        atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
        if args.video is not None:
            atomic_write(args.video, lambda f: f.write(encode_gif(frames, 30)))
    except UserError as e:
        print(f"rssm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteModel as e:
        print(f"rssm-eval: {args.run_dir}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"rssm-eval: {result['env']} mean return {result['mean']:.1f} +- {result['std']:.1f} over "
          f"{len(result['returns'])} episodes -> {out}")


def _evaluate(args: argparse.Namespace) -> tuple[dict, list[np.ndarray]]:
    """The JSON result of `rssm-eval`'s episodes and the recorded frames. Raises UserError for bad input."""
    if args.episodes < 1:
        raise UserError("--episodes must be >= 1")
    for path in (args.out, args.video):  # checked before the episodes are played, not after
        if path is not None and not path.parent.is_dir():
            raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    cfg, agent = load_run(args.run_dir, args.device)
    render_mode = "rgb_array" if args.video else None
    envs, spec = build_envs(cfg, num=1, render_mode=render_mode)
    try:
        returns, frames = run_episodes(agent, envs, spec, args.episodes, args.seed, record=args.video is not None,
                                       remake=lambda: build_envs(cfg, num=1, render_mode=render_mode)[0])
    finally:
        envs.close()
    result = {"env": env_id(cfg), "episodes": len(returns), "returns": returns,
              "mean": float(np.mean(returns)), "std": float(np.std(returns))}
    return result, frames


if __name__ == "__main__":
    main()
