"""Speed of the agent's update and of acting, per size preset, on random data, with the model the config builds.

Each model preset (configs/model/) is composed with the default config (today's DreamerV3 unless `--set algo=...`
says otherwise) and timed in up to four parts:

    wm        a world-model update alone (`agent=world_model`: loss, backward, optimizer step)
    behavior  a behaviour update alone: imagination from every state of a fixed posterior, actor and critic losses,
              their backward passes and optimizer steps (the world model is not trained)
    agent     a whole agent update: world model, imagination from every replayed state, actor and critic
    act     one batched `Agent.act` for `--envs` envs (posterior step, policy, sample)

For each it reports the time of the first call (with `--compile`, mostly compilation), the median time of
`--iters` timed calls after `--warmup`, the FLOPs of one call (torch.utils.flop_counter: matmuls and
convolutions, counted on the eager path), the FLOP rate and its share of this machine's measured matmul rate in
the products' precision (float32, or bfloat16 / float16 with `--precision bf16` / `fp16`), and peak memory.
`--flops` splits the forward pass of the update's losses by part (world-model encoder, RSSM, decoder, reward and
continue heads, actor, critic, slow critic, and the RSSM's loop products that use its weights outside a module
call), and gives imagination's share of it (prior steps, policy, continue head).

    python scripts/benchmark.py --model xxs --part agent --obs-dim 4 --act-dim 2 --threads 1 --flops   # CartPole
    python scripts/benchmark.py --model xs s --part wm --obs-dim 17 --act-dim 6 --continuous --threads 2
    python scripts/benchmark.py --model s --part wm --image 64 --iters 5 --warmup 2
    python scripts/benchmark.py --model s --part agent act --device cuda --precision bf16 --compile --json b.json
    python scripts/benchmark.py --model xxs --part agent --alternate compile=false compile=true --iters 3
    python scripts/benchmark.py --model s --part wm --obs-dim 17 --act-dim 6 --continuous --alternate threads=1 \
        threads=2

`--alternate A B` compares two sets of overrides in one process instead, in turns (`alternate`): on a shared,
noisy machine the way to see a difference of a few percent.

Peak memory on CPU is the process's peak RSS, which only grows: rows run in the order given, so list models
smallest first (or run one per process) to read each row on its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
from hydra import compose, initialize_config_module
from torch.utils.flop_counter import FlopCounterMode

import rssm.agent
import rssm.context
from rssm.build import build_agent
from rssm.config import register_configs
from rssm.envs import EnvSpec
from rssm.host import setup_host


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 7) -> float:
    """Median FLOP/s of an n x n matmul in `dtype`: the machine's practical peak for dense layers."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
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


def make_spec(args: argparse.Namespace) -> EnvSpec:
    shapes = {"image": (args.image, args.image, 3)} if args.image else {"obs": (args.obs_dim,)}
    return EnvSpec(shapes, (args.act_dim,), not args.continuous, -np.ones(args.act_dim), np.ones(args.act_dim))


def random_batch(spec: EnvSpec, B: int, T: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A replay batch as `Replay.sample` gives it: observations, actions a_{t-1}, rewards and flags (B, T, ...)."""
    A = spec.action_dim
    batch = {k: (rng.integers(0, 256, (B, T, *shape), dtype=np.uint8) if len(shape) == 3
                 else rng.standard_normal((B, T, *shape)).astype(np.float32)) for k, shape in spec.obs_shapes.items()}
    batch["action"] = (np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))] if spec.discrete
                       else rng.uniform(-1, 1, (B, T, A)).astype(np.float32))
    batch["reward"] = rng.standard_normal((B, T)).astype(np.float32)
    batch["is_first"] = rng.random((B, T)) < 0.02
    batch["is_terminal"] = rng.random((B, T)) < 0.02
    return batch


def name_modules(counter: FlopCounterMode, agent) -> None:
    """Name the agent's modules in the counter's breakdown by their place in the agent (`world_model.rssm`): the
    world model is never called as a module itself, so its parts would otherwise count under their class names."""
    known = getattr(getattr(counter, "mod_tracker", None), "_known_modules", None)
    if known is None:  # another torch: the breakdown falls back to class names
        return
    for top, module in agent.modules().items():
        for name, sub in module.named_modules():
            known[sub] = f"{top}.{name}" if name else top


def flop_parts(counter: FlopCounterMode) -> dict[str, int]:
    """FLOPs per part of a forward pass: the world model's direct children, the actor, the critic and its slow copy,
    and what ran outside any module (the RSSM's loop products, which use its weights directly)."""
    counts = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}

    def part(name: str) -> str | None:
        pieces = name.split(".")
        if pieces[0] == "world_model" and len(pieces) >= 2:
            return ".".join(pieces[:2])
        return next((p for p in ("actor", "critic.net", "critic.slow") if name == p or name.startswith(p + ".")), None)

    parts: dict[str, int] = defaultdict(int)
    for name, flops in counts.items():
        # Count each module once: at the outermost name of its part that the counter recorded (a part that is
        # not called as a module itself, such as the RSSM, is the sum of its outermost children).
        ancestors = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        if (p := part(name)) and not any(a in counts and part(a) == p for a in ancestors):
            parts[p] += flops
    parts["outside modules"] = counter.get_total_flops() - sum(parts.values())
    return dict(parts)


def forward_flops(agent, batch: dict[str, np.ndarray], world_model: bool = True) -> dict[str, int]:
    """The forward FLOPs of an update's losses, per part (`flop_parts`), and of imagination alone; without
    `world_model`, of the behaviour losses alone (the posterior computed outside the count). Only the forward pass
    is split: the counter's attribution of backward work to modules is not exact."""
    counter, inner = FlopCounterMode(display=False, depth=None), FlopCounterMode(display=False)
    name_modules(counter, agent)
    real = rssm.agent.imagine

    def counted(*a, **k):
        with inner:
            return real(*a, **k)

    rssm.agent.imagine = counted
    data = rssm.agent.to_torch(batch, agent.device)
    try:
        with torch.no_grad():
            post = None if world_model else agent.wm.loss(data, agent.scales)[2]
        with counter, torch.no_grad():
            if world_model:
                _, _, post = agent.wm.loss(data, agent.scales)
            if agent.actor is not None:
                agent._behavior_losses(post, data)
    finally:
        rssm.agent.imagine = real
    parts = flop_parts(counter)
    if agent.actor is not None:
        parts["imagination"] = inner.get_total_flops()
    return parts


def make_call(model: str, part: str, args: argparse.Namespace, device: torch.device, extra: list[str] = ()):
    """The agent the config builds (`extra`: overrides after the others) and one call of `part` on it, with the
    batch the FLOP count uses: (call, agent, batch, (B, T))."""
    overrides = [f"model={model}", f"precision={args.precision}", f"compile={str(args.compile).lower()}", *args.set]
    overrides += ["agent=world_model"] if part == "wm" else []
    overrides += list(extra)
    with initialize_config_module("rssm.configs", version_base=None):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    spec = make_spec(args)
    agent = build_agent(cfg, spec, device)
    B, T = cfg.replay.batch_size, cfg.replay.batch_length
    if part == "act":
        steps = [random_batch(spec, args.envs, 1, rng) for _ in range(4)]
        transitions = [{k: v[:, 0] for k, v in s.items()} for s in steps]
        state = [None]

        def call() -> None:
            _, state[0] = agent.act(transitions[call.k % 4], state[0], explore=True)
            call.k += 1
        call.k = 0
    elif part == "behavior":
        batches = [random_batch(spec, B, T, rng) for _ in range(2)]
        starts = []
        for batch in batches:
            data = rssm.agent.to_torch(batch, device)
            with torch.no_grad():
                starts.append((agent.wm.loss(data, agent.scales)[2], data))
        go = torch.ones((), dtype=torch.bool, device=device)

        def call() -> None:
            agent._update_behavior(*starts[call.k % 2], go)
            call.k += 1
        call.k = 0
    else:
        batches = [random_batch(spec, B, T, rng) for _ in range(2)]
        start = None  # with a replay context (replay.context=1): sequences from stored states, written back after
        if cfg.replay.context:
            stored = {"latent_deter": rng.standard_normal((B, cfg.model.deter)).astype(np.float32),
                      "latent_stoch": rng.integers(0, cfg.model.classes, (B, cfg.model.groups)).astype(np.int16)}
            start = rssm.context.start_state(stored, cfg.model.classes, device)

        def call() -> None:
            agent.update(batches[call.k % 2], start)
            if start is not None:
                rssm.context.stored(agent.posterior)  # the states' copy to the host, as the write-back makes it
            call.k += 1
        call.k = 0
    return call, agent, None if part == "act" else batches[0], (B, T)


def bench(model: str, part: str, args: argparse.Namespace, device: torch.device) -> dict:
    call, agent, batch, (B, T) = make_call(model, part, args, device)
    start = time.perf_counter()
    call()  # optimizer states, the allocator's first pass and any compilation, outside the counts
    sync(device)
    first = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.iters):
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    seconds, peak_mb = statistics.median(times), peak_memory_mb(device)
    # FLOPs counted after the timed calls, eagerly: a compiled function called under the counter's dispatch mode
    # ran slower for the rest of the process (xxs world model: 160-175 ms against 90-110 before it).
    with torch.compiler.set_stance("force_eager"):
        with FlopCounterMode(display=False) as counter:
            call()
        parts = forward_flops(agent, batch, part != "behavior") if part != "act" else {}
    flops = counter.get_total_flops()
    row = {"model": model, "part": part, "flops": flops, "first_s": first, "forward_parts": parts}
    row.update(params=sum(p.numel() for m in agent.modules().values() for p in m.parameters()),
               ms=1e3 * seconds, ms_min=1e3 * min(times), gflop=flops / 1e9, gflops=flops / seconds / 1e9,
               peak_mb=peak_mb, batch=args.envs if part == "act" else f"{B}x{T}")
    return row


def alternate(model: str, part: str, args: argparse.Namespace, device: torch.device) -> dict:
    """The two configs of `--alternate A B` in one process, timed in turns: each round takes the fastest of
    `--iters` calls of A, then of B. A machine that speeds up or slows down over the run moves both alike, so the
    median of the rounds' ratios compares them where separate processes, minutes apart, would not. An arm's
    `threads=N` sets torch's threads for its own calls (`--alternate threads=1 threads=2`)."""
    arms = []
    for overrides in args.alternate:
        threads = [int(o.split("=", 1)[1]) for o in overrides.split() if o.startswith("threads=")]
        arms.append((make_call(model, part, args, device, overrides.split())[0], (threads or [args.threads])[-1]))
    for call, threads in arms:
        torch.set_num_threads(threads)
        for _ in range(1 + args.warmup):  # the first call compiles, where anything does
            call()
    rounds: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for (call, threads), times in zip(arms, rounds, strict=True):
            torch.set_num_threads(threads)
            best = float("inf")
            for _ in range(args.iters):
                sync(device)
                start = time.perf_counter()
                call()
                sync(device)
                best = min(best, time.perf_counter() - start)
            times.append(best)
    ratios = sorted(a / b for a, b in zip(*rounds, strict=True))
    return {"model": model, "part": part, "arms": list(args.alternate), "threads": [t for _, t in arms],
            "ms": [[1e3 * t for t in r] for r in rounds],
            "median_ms": [1e3 * statistics.median(r) for r in rounds], "speedup": statistics.median(ratios),
            "speedup_range": [ratios[0], ratios[-1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["xxs", "s"], help="size presets (configs/model/)")
    parser.add_argument("--part", nargs="+", default=["wm", "agent"], choices=["wm", "behavior", "agent", "act"])
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides, e.g. algo=dreamerv3_2023")
    parser.add_argument("--obs-dim", type=int, default=4, help="vector observation size (CartPole's: 4)")
    parser.add_argument("--act-dim", type=int, default=2)
    parser.add_argument("--continuous", action="store_true", help="a continuous action vector, not one-hot")
    parser.add_argument("--image", type=int, default=0, help="observe SIZE x SIZE x 3 uint8 images, not vectors")
    parser.add_argument("--envs", type=int, default=16, help="envs of one batched act")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--compile", action="store_true", help="compile=true: torch.compile (inductor)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the config's precision= (bf16, fp16: forward passes under autocast in it)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flops", action="store_true", help="print the FLOPs of each module too")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--alternate", nargs=2, metavar=("A", "B"), default=None,
                        help="compare two sets of overrides (each one quoted string, e.g. 'compile=false' "
                             "'compile=true') in one process, in turns, instead of the table")
    parser.add_argument("--rounds", type=int, default=8, help="turns of each with --alternate")
    args = parser.parse_args()

    setup_host(args.threads)  # as a training run sets up its process
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    register_configs()
    # The share is of the matmul rate in the precision the products run in.
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    peak_rate = matmul_rate(device, dtype)
    obs = f"{args.image}x{args.image}x3 images" if args.image else f"{args.obs_dim}-dim vectors"
    print(f"device {device}, threads {args.threads}, precision {args.precision}, obs {obs}, {args.act_dim} "
          f"{'continuous' if args.continuous else 'discrete'} actions, overrides {args.set or 'none'}; "
          f"{str(dtype).removeprefix('torch.')} matmul rate {peak_rate / 1e9:.1f} GFLOP/s")
    if args.alternate:
        results = []
        for model in args.model:
            for part in args.part:
                r = alternate(model, part, args, device)
                results.append(r)
                (a, b), (ma, mb) = r["arms"], r["median_ms"]
                print(f"{model} {part}, {args.rounds} rounds, the fastest of {args.iters} calls each: '{a}' "
                      f"{ma:.1f} ms, '{b}' {mb:.1f} ms (medians); '{b}' {r['speedup']:.2f}x as fast "
                      f"(median of the rounds' ratios; {r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "matmul_flops": peak_rate, "alternate": results}, f, indent=2)
        return
    print(f"{'model':>8} {'part':>5} {'batch':>6} {'params':>8} {'ms':>8} {'min ms':>8} {'GFLOP':>7} {'GFLOP/s':>8} "
          f"{'of peak':>7} {'peak MB':>8} {'first s':>8}")
    results = []
    for model in args.model:
        for part in args.part:
            r = bench(model, part, args, device)
            r["of_peak"] = r["gflops"] * 1e9 / peak_rate
            results.append(r)
            print(f"{model:>8} {part:>5} {r['batch']:>6} {r['params'] / 1e6:7.2f}M {r['ms']:8.1f} {r['ms_min']:8.1f} "
                  f"{r['gflop']:7.2f} {r['gflops']:8.1f} {r['of_peak']:7.1%} {r['peak_mb']:8.0f} {r['first_s']:8.1f}")
            if args.flops and r["forward_parts"]:
                forward = sum(v for k, v in r["forward_parts"].items() if k != "imagination")
                print(f"{'':>15} forward pass of the losses: {forward / 1e9:.3f} GFLOP, "
                      f"{forward / r['flops']:.0%} of the update's")
                for name, f in sorted(r["forward_parts"].items(), key=lambda kv: -kv[1]):
                    print(f"{'':>17} {name:<26} {f / 1e9:8.3f} GFLOP {f / max(forward, 1):6.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "matmul_flops": peak_rate, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
