"""Trains the official DreamerV3 (danijar/dreamerv3, JAX) and rssm with the same settings and compares them.

Side by side: the same env, size, train ratio, batch, envs and steps, and the returns of their training episodes.

Both command lines are built from one table (`FAMILIES` below, a dict per env family), so that a setting cannot
change on one side alone. Runs live in ROOT/ENV/IMPL/seed_S (IMPL: official or rssm), each run's output also in
ROOT/ENV/IMPL/seed_S.log. The official code runs in its own Python environment through
`scripts/parity_official.py` (it adds a gymnasium adapter and a DMC env that draws no video frames). Make it once:

    python3.11 -m venv /path/venv && /path/venv/bin/pip install "jax==0.4.33" "jaxlib==0.4.33" ninjax elements \\
        portal granular "optax==0.2.3" "chex==0.1.87" einops scope ruamel.yaml "numpy<2" jaxtyping \\
        colored_traceback tqdm "gymnasium[classic-control]>=1.0"
    /path/venv/bin/pip install "dm-control==1.0.22" "mujoco==3.2.3"   # apart: resolved with the rest, pip
                                                                        # backtracks for an hour
    git clone https://github.com/danijar/dreamerv3 && git -C dreamerv3 checkout e3f0224

The DMC comparison (3 seeds x 2 tasks x 2 implementations; `--cpus` pins each run to a core, so that runs on
other cores do not slow it), then its table and figure per task:

    for task in cartpole_swingup walker_walk; do for seed in 0 1 2; do
      python scripts/parity.py run --impl official --env dmc_$task --seed $seed --root runs/parity \
          --official-dir dreamerv3 --official-python /path/venv/bin/python --cpus 0
      python scripts/parity.py run --impl rssm --env dmc_$task --seed $seed --root runs/parity --cpus 0
    done; done
    for task in cartpole_swingup walker_walk; do
      python scripts/parity.py compare --root runs/parity --env dmc_$task
      python scripts/parity.py plot --root runs/parity --env dmc_$task --out runs/parity/dmc_$task/returns
    done
    python scripts/parity.py time --env dmc_walker_walk --official-dir dreamerv3 \
        --official-python /path/venv/bin/python --cpus 0   # the update's time of each

Subcommands (OUT: `--out-dir`, default ROOT):
    run      train one seed of one implementation (`--dry-run`: print the command); a run already in its directory
             is continued (official: started again on its logdir; rssm: `rssm-train resume=DIR`), a finished one
             left alone (official: once upstream ended its run, `parity_done.json` in its logdir says so)
    scores   per run, a score point every `--every` agent steps: the mean return of the training episodes that
             ended in (step - every, step], written to OUT/ENV/IMPL/seed_S.csv (step,value)
    compare  per seed the mean of its last `--last` score points up to the step every run has reached; each
             implementation's mean over its seeds and a 95% bootstrap interval of mean(rssm) - mean(official),
             printed and written to OUT/ENV/compare.json and compare.md
    plot     writes the score points (as `scores`) and draws both implementations in one figure (rssm-plot,
             a group each: the mean over seeds with its bootstrap band)
    time     the update's time under the same settings (official: parity_official.py's `time`; rssm:
             scripts/benchmark.py), the median in ms per implementation

How the scores are read from each implementation's files: `scripts/parity_scores.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from parity_scores import (
    DONE,
    IMPLS,
    METRICS,
    all_points,
    bootstrap_difference,
    final_returns,
)

from rssm.config import UserError

# The matched settings: the one place both command lines are built from. repeat: agent steps per env step;
# episode: agent steps per episode (0: the env's own limit); every: agent steps per score point.
FAMILIES = {
    # DMC from proprioception: action repeat 2 and 500 agent steps per episode (upstream's DMC episodes are the
    # suite's 1,000 control steps: only rssm is told the length), upstream's dmc_proprio size (size1m); a score point
    # per wave of `envs` episodes.
    "dmc": dict(repeat=2, episode=500, steps=100_000, train_ratio=64, batch=16, length=64, envs=16,
                replay=1_000_000, size="size1m", every=None),
    # gymnasium: rssm's own defaults for the env (configs/env/<rssm_env>.yaml: size, train ratio; trainer.steps).
    "gym": dict(repeat=1, episode=0, steps=20_000, batch=16, length=64, envs=16, replay=1_000_000, every=10_000,
                ids={"CartPole-v1": dict(rssm_env="cartpole", size="xxs", train_ratio=128),
                     "Pendulum-v1": dict(rssm_env="pendulum", size="xxs", train_ratio=128)}),
}
# Upstream's model flags for each rssm size preset (configs/model/<preset>.yaml) under rssm's algo=dreamerv3,
# whose encoder, decoder, actor and critic MLPs are 3 layers deep at every size (model.mlp_layers), as upstream's:
# deter = rssm deter, hidden = rssm units, stoch = rssm groups, classes = rssm classes, units = rssm units (every
# MLP), depth = rssm cnn_depth; the reward and continue heads have 1 layer on both sides.
UPSTREAM_SIZES = {
    "xxs": dict(deter=128, hidden=128, stoch=16, classes=16, units=128, layers=3, depth=16),  # rssm model=xxs
    "size1m": dict(deter=512, hidden=64, stoch=32, classes=4, units=64, layers=3, depth=4),  # model=size1m
    "size12m": dict(deter=2048, hidden=256, stoch=32, classes=16, units=256, layers=3, depth=16),  # model=size12m
}


def upstream_size_flags(size: str) -> list[str]:
    u = UPSTREAM_SIZES[size]
    flags = [f"--agent.dyn.rssm.{k}={u[k]}" for k in ("deter", "hidden", "stoch", "classes")]
    for part in ("enc.simple", "dec.simple"):
        flags += [f"--agent.{part}.units={u['units']}", f"--agent.{part}.layers={u['layers']}",
                  f"--agent.{part}.depth={u['depth']}"]
    for part in ("rewhead", "conhead"):
        flags += [f"--agent.{part}.units={u['units']}", f"--agent.{part}.layers=1"]
    for part in ("policy", "value"):
        flags += [f"--agent.{part}.units={u['units']}", f"--agent.{part}.layers={u['layers']}"]
    return [piece for flag in flags for piece in flag.split("=")]


def settings(env: str, steps: int | None = None, train_ratio: float | None = None, envs: int | None = None,
             size: str | None = None, lr: float | None = None, warmup: int | None = None) -> dict:
    """The table's settings for `env` (dmc_<task> or gym_<id>), with what the command line changes (`lr` and
    `warmup`: one learning rate and warm-up for every module on both sides; None: upstream's 4e-5 and 1,000 updates,
    which algo=dreamerv3 shares).

    Raises:
        UserError: an env the table has no settings for, or a size without upstream flags.
    """
    family, _, task = env.partition("_")
    if family not in FAMILIES or not task:
        raise UserError(f"unknown env '{env}': give dmc_<task> (e.g. dmc_walker_walk) or gym_<id> "
                        f"({', '.join('gym_' + i for i in FAMILIES['gym']['ids'])})")
    s = {k: v for k, v in FAMILIES[family].items() if k != "ids"}
    if family == "gym":
        if task not in FAMILIES["gym"]["ids"]:
            raise UserError(f"unknown env '{env}': the gym envs with matched settings are "
                            f"{', '.join('gym_' + i for i in FAMILIES['gym']['ids'])}")
        s.update(FAMILIES["gym"]["ids"][task])
    changes = dict(steps=steps, train_ratio=train_ratio, envs=envs, size=size)
    s.update({k: v for k, v in changes.items() if v is not None}, family=family, task=task, lr=lr, warmup=warmup)
    if s["size"] not in UPSTREAM_SIZES:
        raise UserError(f"--size {s['size']} has no upstream flags here: give one of {', '.join(UPSTREAM_SIZES)}")
    s["every"] = s["every"] or s["envs"] * s["episode"]
    return s


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def official_flags(s: dict, seed: int, run_dir: Path | None) -> list[str]:
    """Upstream's flags for the settings (`run_dir` None: no logdir, for `time`)."""
    task = ["--configs", "dmc_proprio", "--task", f"dmc_{s['task']}"] if s["family"] == "dmc" else \
        ["--task", f"gym_{s['task']}"]
    flags = [*task, *(["--logdir", str(run_dir)] if run_dir else []), "--jax.platform", "cpu",
             "--jax.compute_dtype", "float32", "--jax.prealloc", "False", "--run.steps", number(s["steps"]),
             "--run.train_ratio", number(s["train_ratio"]), "--run.envs", number(s["envs"]), "--seed", str(seed),
             "--logger.outputs", "jsonl", "--run.debug", "True"]  # debug: envs stepped in this process
    flags += ["--env.dmc.repeat", number(s["repeat"])] if s["family"] == "dmc" else []  # gym: no repeat upstream
    flags += ["--replay.size", number(s["replay"]), "--run.save_every", "600", "--batch_size", number(s["batch"]),
              "--batch_length", number(s["length"])]
    flags += ["--agent.opt.lr", number(s["lr"])] if s["lr"] is not None else []  # one optimiser upstream
    flags += ["--agent.opt.warmup", number(s["warmup"])] if s["warmup"] is not None else []
    return flags + upstream_size_flags(s["size"])


def rssm_overrides(s: dict, seed: int, run_dir: Path | None) -> list[str]:
    """rssm-train's overrides for the settings (`run_dir` None: the model's and the update's alone, for `time`)."""
    env = ["env=dmc", f"env.task={s['task']}"] if s["family"] == "dmc" else [f"env={s['rssm_env']}"]
    overrides = ["algo=dreamerv3", *env, f"env.action_repeat={s['repeat']}", f"env.time_limit={s['episode']}",
                 f"model={s['size']}", f"trainer.steps={s['steps']}", f"trainer.train_ratio={number(s['train_ratio'])}",
                 f"env.num_envs={s['envs']}", f"replay.capacity={s['replay']}", f"replay.batch_size={s['batch']}",
                 f"replay.batch_length={s['length']}", f"seed={seed}", "threads=1", "precision=fp32", "compile=false"]
    if s["lr"] is not None:
        overrides += [f"{key}={number(s['lr'])}" for key in ("wm.lr", "agent.actor_lr", "agent.critic_lr")]
    overrides += [f"optim.warmup={number(s['warmup'])}"] if s["warmup"] is not None else []
    if run_dir is None:
        return overrides
    # log_every = envs: every env step's finished episodes are written, as upstream writes each episode's score.
    return overrides + ["logger=[tensorboard,jsonl]", f"trainer.log_every={s['envs']}", "trainer.eval_every=0",
                        "trainer.checkpoint_every=5000", "trainer.progress=false", f"hydra.run.dir={run_dir}"]


def rssm_train() -> str:
    beside = Path(sys.executable).with_name("rssm-train")  # the one installed with this python
    return str(beside) if beside.is_file() else "rssm-train"


def check_official(checkout: Path | None, python: Path | None) -> tuple[Path, Path]:
    if checkout is None or python is None:
        raise UserError("the official implementation needs --official-dir CHECKOUT and --official-python PY")
    if not (checkout / "dreamerv3" / "main.py").is_file():
        raise UserError(f"--official-dir {checkout} is not a checkout of danijar/dreamerv3 (no dreamerv3/main.py)")
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise UserError(f"--official-python {python} is not an executable file")
    return checkout, python


def pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def child_env(s: dict) -> dict[str, str]:
    return {"MUJOCO_GL": "egl"} if s["family"] == "dmc" else {}  # DMC renders nothing here, but loads a backend


def run_command(args: argparse.Namespace, s: dict, run_dir: Path) -> tuple[list[str] | None, str]:
    """The command that trains (or continues) the run, or None where there is nothing to do, and what it does."""
    if args.impl == "official":
        checkout, python = check_official(args.official_dir, args.official_python)
        if (run_dir / DONE).is_file():
            return None, f"{run_dir} is finished ({DONE})"
        state = "continuing it from its checkpoint" if (run_dir / "ckpt").is_dir() else "a new run"
        script = Path(__file__).resolve().with_name("parity_official.py")
        command = [str(python), str(script), str(checkout.absolute()), "train", *official_flags(s, args.seed, run_dir)]
    else:
        if (run_dir / "model.pt").is_file():
            return None, f"{run_dir} is finished (model.pt)"
        if (run_dir / "checkpoint.pt").is_file():
            command, state = [rssm_train(), f"resume={run_dir}"], "continuing it (resume=)"
        else:
            command, state = [rssm_train(), *rssm_overrides(s, args.seed, run_dir)], "a new run"
    return pinned(command, args.cpus), f"{run_dir}: {state}"


def tee(lines, log) -> None:
    for line in lines:  # to the terminal and to seed_S.log
        sys.stdout.write(line)
        log.write(line)


def cmd_run(args: argparse.Namespace) -> int:
    s = settings(args.env, args.steps, args.train_ratio, args.envs, args.size, args.lr, args.warmup)
    run_dir = (args.root / args.env / args.impl / f"seed_{args.seed}").absolute()
    command, why = run_command(args, s, run_dir)
    if command is None:
        print(f"parity.py: {why}: nothing to do")
        return 0
    env = child_env(s)
    print(f"parity.py: {why}\n" + shlex.join([f"{k}={v}" for k, v in env.items()] + command), flush=True)
    if args.dry_run:
        return 0
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.with_suffix(".log"), "a") as log, \
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **env}) as proc:
        try:
            tee(proc.stdout, log)
        except KeyboardInterrupt:  # the run got the signal too and stops (rssm checkpoints first): its last words
            tee(proc.stdout, log)
        rc = proc.wait()
    if rc == 0 and args.impl == "official":  # upstream ended its loop: run.steps reached
        run_dir.mkdir(exist_ok=True)
        (run_dir / DONE).write_text(json.dumps({"command": command}) + "\n")
    return rc


# Scores.


def points_of(args: argparse.Namespace) -> tuple[dict[str, dict[int, list]], int]:
    """Every run's score points of `--metric` under ROOT/ENV (`all_points`), and the agent steps between points."""
    s = settings(args.env)
    every = args.every or s["every"]
    return all_points(args.root, args.env, every, args.metric, s["repeat"], s["envs"], args.seeds), every


def write_scores(args: argparse.Namespace) -> dict[str, list[Path]]:
    points, every = points_of(args)
    what = ("return of the training episodes (sampled policy) that ended" if args.metric == "return" else
            f"{METRICS[args.metric][0]} written")
    suffix = "" if args.metric == "return" else f".{args.metric}"
    written: dict[str, list[Path]] = {}
    for impl, seeds in points.items():
        for seed, curve in seeds.items():
            path = (args.out_dir or args.root) / args.env / impl / f"seed_{seed}{suffix}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {impl} seed {seed}: mean {what} in (step - {every}, step], agent steps\n"
                            f"step,value\n"
                            + "".join(f"{step},{value:.6g}\n" for step, value in curve))
            written.setdefault(impl, []).append(path)
    return written


def cmd_scores(args: argparse.Namespace) -> int:
    for impl, paths in write_scores(args).items():
        print(f"parity.py: {impl}: wrote {', '.join(map(str, paths))}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rssm.plot import main as rssm_plot

    groups = [piece for impl, paths in write_scores(args).items() for piece in ("--group", impl, *map(str, paths))]
    rssm_plot([*groups, "--xlabel", "agent steps", "--ylabel", METRICS[args.metric][0], "--title", args.env,
               "--out", str(args.out)])
    return 0


# Comparison.


def cmd_compare(args: argparse.Namespace) -> int:
    points, every = points_of(args)
    missing = [impl for impl in IMPLS if not points[impl]]
    if missing:
        raise UserError(f"no {' or '.join(missing)} run under {args.root / args.env} has a score point yet: "
                        f"nothing to compare with")
    if args.last < 1:
        raise UserError(f"--last must be at least 1, got {args.last}")
    finals, end = final_returns(points, args.last)
    rssm, official = (np.array(list(finals[impl].values())) for impl in ("rssm", "official"))
    diff, low, high = bootstrap_difference(rssm, official)
    side = f"the interval {'includes 0' if low <= 0 <= high else 'lies above 0' if low > 0 else 'lies below 0'}"
    is_return = args.metric == "return"
    if is_return:  # a return is better higher: rssm is within the spread unless the interval lies below 0
        verdict = f"{'within' if high >= 0 else 'below'} the official's spread ({side})"
    else:
        verdict = f"{'no difference shown' if low <= 0 <= high else 'higher in rssm' if low > 0 else 'lower in rssm'}"\
                  f" ({side})"
    if min(len(rssm), len(official)) < 2:  # one value has no spread: its interval is that value
        verdict = "not decided: a spread needs 2 or more seeds of each implementation"
    result = {"env": args.env, "metric": args.metric, "every": every, "last": args.last, "up_to_step": end,
              "final_return" if is_return else "final": {impl: {str(k): v for k, v in seeds.items()}
                                                          for impl, seeds in finals.items()},
              "mean": {impl: float(np.mean(list(finals[impl].values()))) for impl in IMPLS},
              "difference": diff, "ci95": [low, high], "draws": 10_000, "verdict": verdict}
    fmt = (lambda v, sign="": f"{v:{sign}.1f}") if is_return else (lambda v, sign="": f"{v:{sign}.4g}")
    if is_return:
        name, what = "final return", (f"{args.env}: final return = mean of each seed's last {args.last} score points "
                                      f"up to agent step {end:,} (training episodes, sampled policy; a point every "
                                      f"{every:,} steps)")
    else:
        name, what = "final", (f"{args.env}: {METRICS[args.metric][0]}, final = mean of each seed's last {args.last} "
                               f"points up to agent step {end:,} (a point every {every:,} steps: the mean of the "
                               f"values written in it)")
    rows = [(impl, str(seed), fmt(v)) for impl in IMPLS for seed, v in finals[impl].items()]
    rows += [(impl, f"mean of {len(finals[impl])}", fmt(result["mean"][impl])) for impl in IMPLS]
    summary = (f"mean(rssm) - mean(official) = {fmt(diff, '+')}, 95% bootstrap interval [{fmt(low, '+')}, "
               f"{fmt(high, '+')}] (seeds drawn with replacement within each implementation, 10,000 draws): {verdict}")
    print(what)
    print("\n".join(f"{impl:<10} {seed:<12} {value:>8}" for impl, seed, value in [("impl", "seed", "final"), *rows]))
    print(summary)
    out = (args.out_dir or args.root) / args.env
    out.mkdir(parents=True, exist_ok=True)
    stem = "compare" if is_return else f"compare.{args.metric}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(f"{what}\n\n| impl | seed | {name} |\n|---|---|---:|\n"
                                    + "".join(f"| {impl} | {seed} | {value} |\n" for impl, seed, value in rows)
                                    + f"\n{summary}\n")
    print(f"parity.py: wrote {out / f'{stem}.json'}, {out / f'{stem}.md'}")
    return 0


# Update time.


def env_dims(s: dict) -> tuple[int, int, bool]:
    """The env's observation size (its vectors together), action size and whether actions are discrete."""
    from rssm.dmc import make_dmc_env
    from rssm.envs import make_env

    os.environ.update(child_env(s))
    if s["family"] == "dmc":
        env, spec = make_dmc_env(s["task"], s["repeat"], s["episode"])
    else:
        env, spec = make_env(s["task"], s["repeat"])
    env.close()
    return sum(math.prod(shape) for shape in spec.obs_shapes.values()), spec.action_dim, spec.discrete


def time_command(impl: str, s: dict, args: argparse.Namespace, json_path: Path) -> list[str]:
    if impl == "official":
        checkout, python = check_official(args.official_dir, args.official_python)
        script = Path(__file__).resolve().with_name("parity_official.py")
        return pinned([str(python), str(script), str(checkout.absolute()), "time", *official_flags(s, 0, None),
                       "--iters", str(args.iters)], args.cpus)
    obs, act, discrete = env_dims(s)
    benchmark = Path(__file__).resolve().with_name("benchmark.py")
    overrides = [o for o in rssm_overrides(s, 0, None) if not o.startswith(("model=", "threads=", "precision=",
                                                                              "compile="))]
    return pinned([sys.executable, str(benchmark), "--model", s["size"], "--part", "agent", "--threads",
                   str(args.threads),
                   "--obs-dim", str(obs), "--act-dim", str(act), *([] if discrete else ["--continuous"]),
                   "--iters", str(args.iters), "--json", str(json_path), "--set", *overrides], args.cpus)


def cmd_time(args: argparse.Namespace) -> int:
    s = settings(args.env, args.steps, args.train_ratio, args.envs, args.size, args.lr, args.warmup)
    impls = IMPLS if args.impl == "both" else (args.impl,)
    if "official" in impls:
        check_official(args.official_dir, args.official_python)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for impl in impls:
            json_path = Path(tmp) / f"{impl}.json"
            command = time_command(impl, s, args, json_path)
            print(f"parity.py: {shlex.join(command)}", flush=True)
            proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **child_env(s)})
            if proc.returncode != 0:
                tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
                raise UserError(f"the {impl} timing failed (exit {proc.returncode}): {tail[0]}")
            if impl == "official":  # upstream prints its spaces first: the result is the last line
                ms = json.loads(proc.stdout.strip().splitlines()[-1])["update_ms_median"]
            else:
                ms = json.loads(json_path.read_text())["results"][0]["ms"]
            pin = f", cpus {args.cpus}" if args.cpus else ""
            threads = f"{args.threads} torch threads" if impl == "rssm" else "XLA's threads"
            lines.append(f"{impl}: update {ms:.1f} ms (median of {args.iters}; batch {s['batch']} x {s['length']}, "
                         f"model {s['size']}, {args.env}, float32, {threads}{pin})")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parity.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", required=True, help="dmc_<task> (e.g. dmc_walker_walk) or gym_<id> (gym_CartPole-v1)")
    setup = argparse.ArgumentParser(add_help=False)
    setup.add_argument("--official-dir", type=Path, help="a checkout of danijar/dreamerv3")
    setup.add_argument("--official-python", type=Path, help="the python of the official code's environment")
    setup.add_argument("--cpus", default=None, help="pin the process to these CPUs (taskset -c), e.g. 1 or 0-3")
    setup.add_argument("--steps", type=int, default=None, help="agent steps (default: the table's)")
    setup.add_argument("--train-ratio", type=float, default=None, help="replayed steps per agent step")
    setup.add_argument("--envs", type=int, default=None, help="envs stepped together")
    setup.add_argument("--size", default=None, choices=list(UPSTREAM_SIZES), help="the rssm size preset")
    setup.add_argument("--lr", type=float, default=None, help="one learning rate for every module, both sides "
                       "(default: upstream's 4e-5); give a continued run the same")
    setup.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up in updates, both sides "
                       "(default: upstream's 1,000)")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--root", type=Path, required=True, help="runs in ROOT/ENV/IMPL/seed_S")
    runs.add_argument("--out-dir", type=Path, default=None, help="write under this, not ROOT (a read-only ROOT)")
    runs.add_argument("--seeds", type=int, nargs="+", default=None,
                      help="only these seeds (default: every seed there; a run still going limits `compare` to "
                           "the step it reached)")
    runs.add_argument("--every", type=int, default=None,
                      help="agent steps per score point (default: a wave of episodes of all envs for DMC, "
                           "10,000 for gym)")
    p = sub.add_parser("run", parents=[common, setup], help="train one seed of one implementation")
    p.add_argument("--impl", required=True, choices=IMPLS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--root", type=Path, required=True, help="the run goes to ROOT/ENV/IMPL/seed_S")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    metric = argparse.ArgumentParser(add_help=False)
    metric.add_argument("--metric", default="return", choices=list(METRICS),
                        help="what to read: the training episodes' return (default) or a world-model term both log")
    sub.add_parser("scores", parents=[common, runs, metric], help="write each run's score points as CSV")
    p = sub.add_parser("compare", parents=[common, runs, metric], help="final returns (or values of --metric), "
                       "and the difference's interval")
    p.add_argument("--last", type=int, default=3, help="score points per seed's final return")
    p = sub.add_parser("plot", parents=[common, runs, metric], help="both implementations' score points in one figure")
    p.add_argument("--out", type=Path, required=True, help="OUT.png and OUT.svg")
    p = sub.add_parser("time", parents=[common, setup], help="the update's time of each implementation")
    p.add_argument("--impl", default="both", choices=[*IMPLS, "both"])
    p.add_argument("--iters", type=int, default=20, help="timed updates")
    p.add_argument("--threads", type=int, default=1, help="rssm's torch threads (XLA takes every CPU it may use: "
                   "pin it with --cpus)")
    args = parser.parse_args(argv)
    commands = {"run": cmd_run, "scores": cmd_scores, "compare": cmd_compare, "plot": cmd_plot, "time": cmd_time}
    try:
        rc = commands[args.command](args)
    except UserError as e:
        print(f"parity.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc)


if __name__ == "__main__":
    main()
