"""Time of one optimizer `step()` over a world model's parameters: rssm.optim.LaProp against torch's Adam.

The world model is built from the composed config (`model=xs` unless `--model` says otherwise) for CartPole's
shapes (a 4-dim vector, 2 actions) and for 64 x 64 x 3 images (the CNN encoder and decoder). Every parameter gets
a fixed random gradient; each optimizer takes `--warmup` steps (its state is created there), then the median of
`--steps` timed steps is reported. LaProp is timed with its defaults (AGC 0.3) and with AGC off.

    python scripts/optim_benchmark.py                      # model xs, one thread, CPU
    python scripts/optim_benchmark.py --model s --threads 2 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_module

from rssm.build import build_world_model
from rssm.config import register_configs
from rssm.optim import LaProp

OBS = {"vector": ({"obs": (4,)}, 2), "image": ({"image": (64, 64, 3)}, 2)}
OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "Adam(foreach=True)": lambda ps: torch.optim.Adam(ps, lr=1e-4, foreach=True),
    "LaProp (AGC 0.3)": lambda ps: LaProp(ps),
    "LaProp (AGC off)": lambda ps: LaProp(ps, agc=0.0),
}


def median_step_ms(opt: torch.optim.Optimizer, device: torch.device, warmup: int, steps: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        opt.step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xs", help="size preset (configs/model/)")
    parser.add_argument("--obs", nargs="+", default=list(OBS), choices=list(OBS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    register_configs()
    with initialize_config_module("rssm.configs", version_base=None):
        cfg = compose("config", overrides=[f"model={args.model}"])

    print(f"model={args.model}  device={device}  threads={args.threads}  median of {args.steps} steps")
    print(f"{'obs':<7} {'tensors':>7} {'params':>10}  {'optimizer':<20} {'ms/step':>8}")
    for name in args.obs:
        shapes, action_dim = OBS[name]
        gen = torch.Generator().manual_seed(0)
        wm = build_world_model(cfg, shapes, action_dim).to(device)
        params = list(wm.parameters())
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        count = sum(p.numel() for p in params)
        for label, make in OPTIMIZERS.items():
            ms = median_step_ms(make(params), device, args.warmup, args.steps)
            print(f"{name:<7} {len(params):>7} {count:>10,}  {label:<20} {ms:>8.3f}")


if __name__ == "__main__":
    main()
