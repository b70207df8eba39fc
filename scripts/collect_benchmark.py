"""Speed of collection: env steps per second with N envs stepped together, for an env config.

One collection step is what the training loop does between updates: step the N envs (`Collector`), add the
row to the replay, and pick the next N actions with the (untrained) actor of the config's model. Reports
the median env steps/s over several timed stretches after a warm-up.

    python scripts/collect_benchmark.py --env cartpole_pixels --envs 1 4 8 --vector sync async --threads 2
    python scripts/collect_benchmark.py --env pong --envs 1 4 8 --vector async -- model=xxs

Extra arguments after `--` are config overrides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from hydra import compose, initialize_config_module

from rssm.build import build_agent, build_envs
from rssm.collector import Collector
from rssm.config import register_configs, validate
from rssm.envs import random_action
from rssm.replay import Replay


def bench(cfg, num: int, kind: str, steps: int, repeats: int) -> dict:
    envs, spec = build_envs(cfg, num)
    try:
        agent = build_agent(cfg, spec, torch.device("cpu"))
        collector, rng = Collector(envs, spec, cfg.seed), np.random.default_rng(cfg.seed)
        replay = Replay(max(num, (steps * (repeats + 1)) // num * num + 2 * num), cfg.seed, envs=num)
        actions, state = random_action(spec, rng, num), None

        def run(count: int) -> float:
            nonlocal actions, state
            start, before = time.perf_counter(), collector.env_steps
            while collector.env_steps - before < count:
                transitions, _ = collector.step(actions)
                replay.add(transitions)
                actions, state = agent.act(transitions, state, explore=True)
            return (collector.env_steps - before) / (time.perf_counter() - start)

        run(steps // 4)  # warm-up: env start, first model calls
        rates = [run(steps) for _ in range(repeats)]
    finally:
        envs.close()
    return {"envs": num, "vector": kind, "steps_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="cartpole_pixels", help="an env config name")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--vector", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    parser.add_argument("--steps", type=int, default=400, help="env steps per timed stretch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    torch.set_num_threads(args.threads)
    register_configs()
    results = []
    print(f"env {args.env} {' '.join(overrides)}, torch threads {args.threads}")
    print(f"{'envs':>4} {'vector':>6} {'steps/s':>8} {'min':>8} {'max':>8}")
    for kind in args.vector:
        for num in args.envs:
            with initialize_config_module("rssm.configs", version_base=None):
                cfg = compose("config", overrides=[f"env={args.env}", f"env.vector={kind}", *overrides])
            validate(cfg)
            r = bench(cfg, num, kind, args.steps, args.repeats)
            results.append(r)
            print(f"{num:>4} {kind:>6} {r['steps_per_s']:8.1f} {r['min']:8.1f} {r['max']:8.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "overrides": overrides, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
