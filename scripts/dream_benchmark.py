"""Imagined env steps per second: `rssm.DreamVecEnv` of N dreams against the run's real env.

Times K steps under random actions after a reset, median over repeats: the dream env (N dreams in one batched call
of the world model) and the real env (N copies in gymnasium's SyncVectorEnv, autoresetting alike), on one torch
thread.
Without `--run` it first trains a CartPole run of model `xxs` for a few hundred steps into a temporary directory
(the speed of a dream does not depend on what the model has learned).

    python scripts/dream_benchmark.py --num-envs 1 64 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import torch

import rssm


def steps_per_s(env, num: int, steps: int, repeats: int) -> float:
    """Median env steps per second (all N envs counted) over `repeats` timings of `steps` batched steps."""
    rates = []
    for r in range(repeats):
        env.reset(seed=r)
        env.action_space.seed(r)
        actions = [env.action_space.sample() for _ in range(steps)]
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        rates.append(num * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def tiny_run(directory: Path) -> Path:
    run_dir = directory / "cartpole_xxs"
    command = [sys.executable, "-m", "rssm", "env=cartpole", "model=xxs", "trainer.steps=300",
               "trainer.prefill=100", "trainer.train_ratio=8", "trainer.eval_every=0", "trainer.progress=false",
               "threads=1", f"hydra.run.dir={run_dir}"]
    subprocess.run(command, check=True, capture_output=True)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: a short CartPole run of model xxs)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--steps", type=int, default=100, help="batched steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or tiny_run(Path(tmp))
        loaded = rssm.load(run_dir)
        m = loaded.config.model
        print(f"{loaded.config.env.id}, world model {m.deter} deter / {m.units} units / {m.groups}x{m.classes} latents "
              f"({sum(p.numel() for p in loaded.world_model.module.parameters()):,} parameters), 1 thread\n")
        rows = []
        print(f"{'N':>6}  {'dream steps/s':>14}  {'real steps/s':>13}")
        for num in args.num_envs:
            dream = steps_per_s(rssm.DreamVecEnv(loaded, num), num, args.steps, args.repeats)
            real_envs = gym.vector.SyncVectorEnv([loaded.make_env for _ in range(num)])
            real = steps_per_s(real_envs, num, args.steps, args.repeats)
            real_envs.close()
            rows.append({"num_envs": num, "dream_steps_per_s": dream, "real_steps_per_s": real})
            print(f"{num:>6}  {dream:>14,.0f}  {real:>13,.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
