"""Playing episodes with a trained agent, and `rssm-eval RUN_DIR`: returns to JSON, optionally a video."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rssm.build import build_agent, build_env, build_envs, env_id, resolve_device
from rssm.config import Config, UserError, validate
from rssm.envs import Collector, EnvSpec
from rssm.logging import encode_gif


def run_episodes(agent, envs, spec: EnvSpec, episodes: int, seed: int, explore: bool = False,
                 record: bool = False) -> tuple[list[float], list[np.ndarray]]:
    """Play `episodes` episodes on a vector env of N envs, each playing ceil(episodes / N) of them (taking the
    first episodes to finish would favour short ones). Returns their returns and, if `record`, the rgb frames
    of env 0's first episode."""
    collector = Collector(envs, spec, seed)
    quota = -(-episodes // collector.num)
    played: list[list[float]] = [[] for _ in range(collector.num)]  # returns per env, in order
    frames, state = [], None
    actions = np.zeros((collector.num, spec.action_dim), np.float32)
    while min(len(r) for r in played) < quota:
        transitions, finished = collector.step(actions)
        if record and not played[0]:
            frames.append(np.asarray(envs.call("render")[0]))
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
    for path in (config_path, model_path):
        if not path.is_file():
            raise UserError(f"{path} not found: is {run_dir} an rssm run directory?")
    # Over the schema's defaults: a run saved before a key existed has the key's default behaviour.
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(config_path))
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
        if args.episodes < 1:
            raise UserError("--episodes must be >= 1")
        cfg, agent = load_run(args.run_dir, args.device)
        envs, spec = build_envs(cfg, num=1, render_mode="rgb_array" if args.video else None)
        returns, frames = run_episodes(agent, envs, spec, args.episodes, args.seed, record=args.video is not None)
        envs.close()
    except UserError as e:
        print(f"rssm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    result = {"env": env_id(cfg), "episodes": len(returns), "returns": returns,
              "mean": float(np.mean(returns)), "std": float(np.std(returns))}
    out = args.out or args.run_dir / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.video is not None:
        save_gif(frames, args.video)
    print(f"rssm-eval: {env_id(cfg)} mean return {result['mean']:.1f} +- {result['std']:.1f} over "
          f"{len(returns)} episodes -> {out}")


if __name__ == "__main__":
    main()
