"""Playing episodes with a trained agent, and `rssm-eval RUN_DIR`: returns to JSON, optionally a video."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rssm.config import Config, UserError, validate
from rssm.envs import Collector, EnvSpec


def run_episodes(agent, env, spec: EnvSpec, episodes: int, seed: int, explore: bool = False,
                 record: bool = False) -> tuple[list[float], list[np.ndarray]]:
    """Play `episodes` episodes. Returns their returns and, if `record`, the rgb frames of the first one."""
    collector = Collector(env, spec, seed)
    returns, frames, state = [], [], None
    action = np.zeros(spec.action_dim, np.float32)
    while len(returns) < episodes:
        transition, episode = collector.step(action)
        if record and not returns:
            frames.append(np.asarray(env.render()))
        if episode is not None:
            returns.append(episode["return"])
        action, state = agent.act(transition, state, explore)
    return returns, frames


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 30) -> None:
    from PIL import Image

    images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def load_run(run_dir: Path, device: str):
    """Rebuild a finished run's agent from its `config.yaml` and `model.pt`. Raises UserError if unusable."""
    from rssm.train import build_agent, build_env, resolve_device

    config_path, model_path = run_dir / "config.yaml", run_dir / "model.pt"
    for path in (config_path, model_path):
        if not path.is_file():
            raise UserError(f"{path} not found: is {run_dir} an rssm run directory?")
    # Over the schema's defaults: a run saved before a key existed has the key's default behaviour.
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(config_path))
    validate(cfg)
    if cfg.agent.kind != "dreamer":
        raise UserError(f"{run_dir} trained a world model alone (agent={cfg.agent.kind}): it has no policy to play")
    env, spec = build_env(cfg)
    env.close()
    agent = build_agent(cfg, spec, resolve_device(device))
    try:
        state = torch.load(model_path, map_location=agent.device, weights_only=True)
        agent.wm.load_state_dict(state["world_model"])
        agent.actor.load_state_dict(state["actor"])
    except (RuntimeError, KeyError, OSError, EOFError) as e:
        raise UserError(f"cannot load {model_path}: {str(e).splitlines()[0]}") from None
    return cfg, agent


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
        from rssm.train import build_env, env_id

        env, spec = build_env(cfg, render_mode="rgb_array" if args.video else None)
        returns, frames = run_episodes(agent, env, spec, args.episodes, args.seed, record=args.video is not None)
        env.close()
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
