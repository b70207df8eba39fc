"""Is the dream worth training in? PPO trained only inside a finished run's world model, evaluated in the real env.

For each seed, PPO from stable-baselines3 (rl-zoo's CartPole-v1 settings: 8 envs, 32 steps each per rollout,
batch 256, 20 epochs, gamma 0.98, GAE 0.8, learning rate 1e-3 and clip range 0.2 both falling linearly to 0)
trains for `--steps` env steps twice: inside `rssm.sb3.DreamVecEnv(run, envs)` (the batched dream, one call of the
world model steps all envs; episodes started from resets of the real env, every later step the world model's;
`--termination` as DreamEnv's), and on the run's real env (SB3's DummyVecEnv of `envs` copies). Both are then
evaluated on the real env: mean return of the deterministic policy over `--episodes` episodes (seeds 1000, 1001,
...).

    rssm-train env=cartpole seed=0 threads=1 hydra.run.dir=runs/cartpole   # a finished CartPole run
    python scripts/dream_ppo.py --run runs/cartpole --steps 100000 --seeds 0 1 2 --json dream_ppo.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import rssm.sb3


def ppo(envs, seed: int) -> PPO:
    return PPO("MlpPolicy", envs, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
               ent_coef=0.0, learning_rate=lambda left: 1e-3 * left, clip_range=lambda left: 0.2 * left, seed=seed,
               device="cpu")


def real_return(agent: PPO, loaded, episodes: int) -> float:
    env = loaded.make_env()
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=1000 + i)
        total, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run (run directory or checkpoint)")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps of PPO's training, each way")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--termination", choices=["sample", "mode"], default="sample",
                        help="how a dream episode ends (rssm.DreamEnv): sampled from the continue head, or its mode")
    parser.add_argument("--dream", choices=["batched", "separate"], default="batched",
                        help="the dream PPO trains in: rssm.sb3.DreamVecEnv (one call of the world model steps every "
                        "env), or --envs separate rssm.DreamEnvs in SB3's DummyVecEnv")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = rssm.load(args.run)
    print(f"{args.run}: {loaded.config.env.id}; PPO {args.steps:,} env steps each way (dream: {args.dream}, "
          f"termination: {args.termination}), eval {args.episodes} episodes of the real env\n")
    print(f"{'seed':>4}  {'in the dream':>12}  {'minutes':>7}  {'in the real env':>15}  {'minutes':>7}")
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        if args.dream == "batched":
            dream = lambda: rssm.sb3.DreamVecEnv(loaded, args.envs, termination=args.termination)  # noqa: E731
        else:
            dream = lambda: DummyVecEnv([lambda: rssm.DreamEnv(loaded, termination=args.termination)]  # noqa: E731
                                        * args.envs)
        real = lambda: DummyVecEnv([loaded.make_env] * args.envs)  # noqa: E731
        for where, make in (("dream", dream), ("real", real)):
            start = time.perf_counter()
            envs = make()
            agent = ppo(envs, seed).learn(args.steps)
            envs.close()
            row[f"{where}_minutes"] = (time.perf_counter() - start) / 60
            row[f"{where}_return"] = real_return(agent, loaded, args.episodes)
        rows.append(row)
        print(f"{seed:>4}  {row['dream_return']:>12.1f}  {row['dream_minutes']:>7.1f}  {row['real_return']:>15.1f}  "
              f"{row['real_minutes']:>7.1f}")
    for where in ("dream", "real"):
        print(f"median return, PPO trained in the {where}: {statistics.median(r[f'{where}_return'] for r in rows):.1f}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "steps": args.steps, "termination": args.termination,
                                         "dream": args.dream, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
