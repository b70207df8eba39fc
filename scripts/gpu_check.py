"""The GPU check: one script, inside ten minutes, that writes a table of rssm's speed on a CUDA device.

1. The device, its measured float32 and bfloat16 matmul rates and its memory bandwidth (a large copy).
2. An agent update of each algorithm version under `torch.cuda.set_sync_debug_mode("error")`: any host sync inside
   the update raises, and the table says where.
3. `scripts/benchmark.py`'s rows for one size preset (`s` by default), vector and 64 x 64 image observations, the
   world-model update and the whole agent update, float32 and bfloat16, eager.
4. The same with `compile=true` (torch.compile, inductor) for vector observations: the agent update in bfloat16
   with the posterior step as CUDA graphs (`compile_mode=reduce-overhead`), in float32 (the default precision:
   whether `compile=auto` should compile models of vectors on a GPU too) and in bfloat16 without graphs, the world
   model alone in bfloat16 with graphs and without, then the image world-model update compiled (its encoder and
   decoder too), each first call (compilation) timed apart; rows that would start after `--budget` seconds are
   left out and listed as such.
5. Two of torch's CUDA settings that rssm leaves at torch's defaults, each on one eager row: float32 products as
   TF32 (`torch.set_float32_matmul_precision("high")`; the vector agent update in float32, against the TF32
   matmul rate) and `torch.backends.cudnn.benchmark` (the image world-model update in bfloat16, whose
   convolutions it lets cuDNN choose by timing): whether either should be set for a run on a GPU.

A row that fails is listed with its error and the check goes on; the table is written after every row, so a check
stopped at its time limit keeps what it measured.

    python scripts/gpu_check.py --out results/          # writes results/gpu_check.json and results/gpu_check.txt

`--device cpu --model debug --iters 1` runs the same steps on a CPU (no sync check there) to try the script out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module

from rssm.build import build_agent
from rssm.config import register_configs

# benchmark.py beside this file, loaded by its path: its timing, FLOP counting and random batches
_spec = importlib.util.spec_from_file_location("benchmark", Path(__file__).resolve().parent / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def bandwidth(device: torch.device, mb: int = 1024, repeats: int = 5) -> float:
    """Bytes per second of a device-to-device copy (read + write) of `mb` MiB."""
    x = torch.empty(mb * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    times = []
    for _ in range(repeats):
        benchmark.sync(device)
        start = time.perf_counter()
        y.copy_(x)
        benchmark.sync(device)
        times.append(time.perf_counter() - start)
    return 2 * x.numel() * 4 / statistics.median(times)


def sync_check(algo: str, args: argparse.Namespace, device: torch.device) -> str:
    """'none' if an update of `algo` makes no host sync, else the error of the first one and where it happened."""
    with initialize_config_module("rssm.configs", version_base=None):
        cfg = compose("config", overrides=[f"model={args.model}", f"algo={algo}"])
    spec = benchmark.make_spec(argparse.Namespace(image=0, obs_dim=4, act_dim=2, continuous=False))
    agent = build_agent(cfg, spec, device)
    batch = benchmark.random_batch(spec, cfg.replay.batch_size, cfg.replay.batch_length, np.random.default_rng(0))
    agent.update(batch)  # optimizer states are made at the first step
    if device.type != "cuda":
        return "not checked (no CUDA)"
    data = {k: torch.as_tensor(v).pin_memory() for k, v in batch.items()}
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        agent.update(data)
        torch.cuda.set_sync_debug_mode(0)
        return "none"
    except RuntimeError as e:
        torch.cuda.set_sync_debug_mode(0)
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/rssm/" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return f"sync at {where}: {str(e).splitlines()[0]}"


@contextlib.contextmanager
def torch_setting(setting: str | None):
    """One of the CUDA settings the check compares (`tf32`, `cudnn.benchmark`) on, inside the block."""
    if setting == "tf32":
        torch.set_float32_matmul_precision("high")
    elif setting == "cudnn.benchmark":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.benchmark = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=".", help="folder for gpu_check.json and gpu_check.txt")
    parser.add_argument("--obs", nargs="+", default=["vector", "image"], choices=["vector", "image"],
                        help="observation kinds of the timed rows (image: 64 x 64)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no compiled row starts (the check must end inside ten minutes)")
    args = parser.parse_args()
    start = time.perf_counter()
    device = torch.device(args.device)
    register_configs()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rates = {str(dt).split(".")[-1]: benchmark.matmul_rate(device, dt) for dt in (torch.float32, torch.bfloat16)}
    with torch_setting("tf32"):
        rates["tf32"] = benchmark.matmul_rate(device, torch.float32)
    bw = bandwidth(device, 1024 if device.type == "cuda" else 64)
    say(f"device {name}; torch {torch.__version__}; matmul float32 {rates['float32'] / 1e12:.1f} TFLOP/s, "
        f"as TF32 {rates['tf32'] / 1e12:.1f}, bfloat16 {rates['bfloat16'] / 1e12:.1f}; "
        f"copy bandwidth {bw / 1e9:.0f} GB/s")
    syncs = {algo: sync_check(algo, args, device) for algo in ("dreamerv3_cpu", "dreamerv3_2023")}
    for algo, result in syncs.items():
        say(f"host syncs inside an update ({algo}): {result}")
    say(f"{'obs':>6} {'part':>8} {'precision':>9} {'compiled':>15} {'setting':>15} {'ms':>8} {'GFLOP':>8} "
        f"{'TFLOP/s':>8} {'of matmul':>9} {'peak MB':>8} {'first s':>8}")
    rows, failed = [], []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        (out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
        (out / "gpu_check.json").write_text(json.dumps(
            {"device": name, "model": args.model, "matmul_flops": rates, "copy_bandwidth": bw, "host_syncs": syncs,
             "rows": rows, "failed": failed}, indent=2, default=str))

    sizes = [64 if kind == "image" else 0 for kind in args.obs]
    # compiled: False (eager), or torch.compile's mode for the posterior step (`compile_mode`); setting: one of
    # `torch_setting`'s, or None
    plan = [(image, precision, part, False, None) for image in sizes for precision in ("fp32", "bf16")
            for part in ("wm", "behavior", "agent")]
    plan += [(0, "fp32", "agent", False, "tf32")] if 0 in sizes else []
    plan += [(64, "bf16", "wm", False, "cudnn.benchmark")] if 64 in sizes else []
    # compiled, most telling first: the fastest path; vectors compiled at the default precision (whether
    # `compile=auto` should compile them on a GPU); the same in bfloat16 without CUDA graphs; the world model alone
    plan += [(0, "bf16", "agent", "reduce-overhead", None), (0, "fp32", "agent", "default", None),
             (0, "bf16", "agent", "default", None), (0, "bf16", "wm", "reduce-overhead", None),
             (0, "bf16", "wm", "default", None)]
    plan += [(64, "bf16", "wm", "default", None)] if 64 in sizes else []  # the compiled image encoder and decoder
    write()
    for image, precision, part, compiled, setting in plan:
        head = (f"{'image' if image else 'vector':>6} {part:>8} {precision:>9} {compiled or 'no':>15} "
                f"{setting or '-':>15}")
        if compiled and time.perf_counter() - start > args.budget:
            say(f"{head} left out: the check had run {args.budget:.0f} s")
            write()
            continue
        bench_args = argparse.Namespace(
            set=[f"compile_mode={compiled}"] if compiled else [], precision=precision, compile=bool(compiled),
            image=image, obs_dim=17, act_dim=6, continuous=not image, envs=16, seed=0, iters=args.iters,
            warmup=args.warmup)
        try:
            with torch_setting(setting):
                r = benchmark.bench(args.model, part, bench_args, device)
        except Exception as e:  # one row's failure (a compiler error, out of memory) is reported, not fatal
            failed.append({"row": head.split(), "error": f"{type(e).__name__}: {e}"})
            say(f"{head} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            write()
            continue
        rate = rates["bfloat16" if precision == "bf16" else setting if setting == "tf32" else "float32"]
        r.update(obs="image" if image else "vector", precision=precision, compiled=compiled, setting=setting,
                 of_peak=r["gflops"] * 1e9 / rate)
        rows.append(r)
        say(f"{head} {r['ms']:8.1f} {r['gflop']:8.1f} {r['gflops'] / 1e3:8.2f} {r['of_peak']:9.1%} "
            f"{r['peak_mb']:8.0f} {r['first_s']:8.1f}")
        write()


if __name__ == "__main__":
    main()
