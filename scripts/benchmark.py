"""Speed of one world-model update per size preset, on random data.

One update is zero_grad + WorldModel.loss + backward + clip_grad_norm_(1000) + Adam step; with `--agent`,
a whole `Agent.update` (that, then imagination from every replayed state and the actor and critic steps;
`params` still counts the world model only). Reports the
median time after warm-up, parameters, FLOPs of one forward+backward (FlopCounterMode), achieved FLOP/s
and its share of this machine's float32 matmul rate, and peak memory.

    python scripts/benchmark.py --sizes xs s --threads 2 --json bench.json
    python scripts/benchmark.py --sizes xxs xs --threads 2 --agent --obs-dim 4 --act-dim 2   # CartPole's shapes
    python scripts/benchmark.py --sizes s --threads 2 --image 64 --iters 5   # 64 x 64 x 3 images, CNN depth 32

Peak memory on CPU is the process's peak RSS, which only grows: sizes run in the order given, so list
them smallest first (or run one size per process) to read each row on its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rssm.agent import Agent, OptimSettings
from rssm.behavior import Actor, BehaviorSettings, Critic
from rssm.world_model import LossScales, WorldModel

# DreamerV3 paper sizes: (deter, units, MLP layers, groups, classes, CNN depth). configs/model/*.yaml hold the same.
SIZES = {
    "xxs": (128, 128, 1, 16, 16, 16),
    "xs": (256, 256, 1, 32, 32, 32),
    "s": (512, 512, 2, 32, 32, 32),
    "m": (1024, 640, 3, 32, 32, 48),
    "l": (2048, 768, 4, 32, 32, 64),
    "xl": (4096, 1024, 5, 32, 32, 96),
}


def random_batch(B: int, T: int, obs_dim: int, act_dim: int, device: torch.device, gen: torch.Generator,
                 image: int = 0) -> dict[str, torch.Tensor]:
    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    obs = (torch.randint(0, 256, (B, T, image, image, 3), generator=gen, dtype=torch.uint8) if image  # (B, T, H, W, 3)
           else torch.randn(B, T, obs_dim, generator=gen))  # (B, T, O)
    batch = {
        "obs": obs,
        "action": rand(B, T, act_dim) * 2 - 1,  # (B, T, A) in [-1, 1]
        "reward": torch.randn(B, T, generator=gen),  # (B, T)
        "is_first": rand(B, T) < 0.05,  # (B, T)
        "is_terminal": rand(B, T) < 0.05,  # (B, T)
    }
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Median float32 FLOP/s of an n x n matmul: the machine's practical peak for dense layers."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up: thread pool, allocator
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def bench_size(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    deter, units, layers, groups, classes, depth = SIZES[name]
    shape = (args.image, args.image, 3) if args.image else (args.obs_dim,)
    model = WorldModel({"obs": shape}, args.act_dim, deter, units, layers, groups, classes,
                       cnn_depth=depth).to(device)
    scales = LossScales()
    batch = random_batch(args.batch, args.length, args.obs_dim, args.act_dim, device, gen, args.image)
    if args.agent:  # world model + actor-critic in imagination, discrete (one-hot) actions
        batch["action"] = F.one_hot(batch["action"].argmax(-1), args.act_dim).float()
        actor = Actor(model.rssm.feat_dim, units, layers, [args.act_dim], discrete=True).to(device)
        critic = Critic(model.rssm.feat_dim, units, layers).to(device)
        agent = Agent(model, scales, OptimSettings(1e-4, 1e-8, 1000.0), actor, critic, BehaviorSettings(),
                      OptimSettings(3e-5, 1e-5, 100.0), OptimSettings(3e-5, 1e-5, 100.0))

        def update() -> None:
            agent.update(batch)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-8)

        def update() -> None:
            opt.zero_grad(set_to_none=True)
            loss, _, _ = model.loss(batch, scales)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
            opt.step()

    with FlopCounterMode(display=False) as counter:
        update()
    flops = counter.get_total_flops()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        update()
    times = []
    for _ in range(args.iters):
        sync(device)
        start = time.perf_counter()
        update()
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "size": name, "params": sum(p.numel() for p in model.parameters()), "ms": 1e3 * seconds,
        "ms_min": 1e3 * min(times), "gflop": flops / 1e9, "gflops": flops / seconds / 1e9,
        "peak_mb": peak_memory_mb(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"], choices=list(SIZES))
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--image", type=int, default=0, help="observe SIZE x SIZE x 3 uint8 images (CNN), not vectors")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agent", action="store_true",
                        help="time a whole agent update (world model, imagination from every state, actor, critic)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    peak_rate = matmul_rate(device)

    results = []
    print(f"device {device}, threads {args.threads}, batch {args.batch}x{args.length}, "
          f"obs {f'{args.image}x{args.image}x3 images' if args.image else f'{args.obs_dim}-dim vectors'}, "
          f"matmul peak {peak_rate / 1e9:.1f} GFLOP/s")
    print(f"{'size':>4} {'params':>9} {'ms':>8} {'min ms':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>7} "
          f"{'peak MB':>8}")
    for name in args.sizes:
        r = bench_size(name, args, device)
        r["of_peak"] = r["gflops"] * 1e9 / peak_rate
        results.append(r)
        print(f"{name:>4} {r['params'] / 1e6:8.2f}M {r['ms']:8.1f} {r['ms_min']:8.1f} {r['gflop']:7.1f} "
              f"{r['gflops']:8.1f} {r['of_peak']:7.1%} {r['peak_mb']:8.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "matmul_flops": peak_rate, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
