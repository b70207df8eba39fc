"""Reads what both implementations' runs logged (their training episodes' returns, their world models' loss terms)
back at agent steps, and compares them: the score points and the bootstrap interval that `scripts/parity.py`
(`scores`, `compare`, `plot`) reports.

Both implementations' scores are the returns of their training episodes, played by the sampled (exploring) policy,
as upstream's published curves are. Upstream writes each episode's return at its step counter, which counts
control steps (times the env's action repeat) and each episode's reset as a step: the official steps here are agent
steps without them, as rssm's are. rssm writes the mean return of the episodes that ended since its last write, at
every step of its envs (`trainer.log_every` = envs): a score point averages those writes (all 16 episodes of a DMC
wave end in one).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from pathlib import Path

import numpy as np

from rssm.config import UserError

IMPLS = ("official", "rssm")
DONE = "parity_done.json"  # written into an official run's logdir once upstream ended its run: it is finished
# What both implementations log, by name: (what it is, upstream's metrics.jsonl key, rssm's metrics.jsonl key, the
# rssm config key of the scale rssm's value carries). "return" is the training episodes' (upstream: scores.jsonl);
# the others are means over the updates since the write before, of the world model's terms before their scales
# (upstream logs them so; rssm logs its KL terms times their scales). Upstream's "rec" is the sum of its losses of
# the observation keys, as rssm's loss/rec is.
METRICS = {
    "return": ("training-episode return (sampled policy)", "episode/score", "episode/return", None),
    "rec": ("reconstruction loss (all keys)", "train/loss/<keys>", "loss/rec", None),
    "reward": ("reward loss", "train/loss/rew", "loss/reward", None),
    "cont": ("continue loss", "train/loss/con", "loss/cont", None),
    "dyn": ("dynamics KL, clipped at free bits", "train/loss/dyn", "loss/kl_dyn", "kl_dyn_scale"),
    "rep": ("representation KL, clipped at free bits", "train/loss/rep", "loss/kl_rep", "kl_rep_scale"),
    "prior_entropy": ("prior entropy (nats)", "train/dyn_ent", "wm/prior_entropy", None),
    "post_entropy": ("posterior entropy (nats)", "train/rep_ent", "wm/post_entropy", None),
}
_NOT_KEYS = {"con", "dyn", "rep", "rew", "policy", "value", "repval"}  # upstream's train/loss/* of no observation key


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file (none if it is missing; a line cut short by a running writer is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def since_restart(rows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(step, value) rows of an official run, whose steps rise, that may have been restarted from a checkpoint: a
    step at or below an earlier one starts again from there, and the rows it replaces (at that step and after) are
    dropped, as TensorBoard drops the events a resumed run writes again."""
    kept: list[tuple[float, float]] = []
    for row in rows:
        while kept and kept[-1][0] >= row[0]:
            kept.pop()
        kept.append(row)
    return kept


def official_run_settings(run_dir: Path, repeat: int, envs: int) -> tuple[int, int]:
    """The action repeat and env count of an official run, from its config.yaml (else the table's)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        suite = config["task"].split("_", 1)[0]
        return int(config.get("env", {}).get(suite, {}).get("repeat", 1)), int(config["run"]["envs"])
    except (OSError, KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError):
        return repeat, envs


def _official_scores(run_dir: Path) -> list[tuple[float, float]]:
    """(step counter x repeat, return) of each episode in an official run's scores.jsonl, restarts undone."""
    return since_restart([(r["step"], r["episode/score"]) for r in read_jsonl(run_dir / "scores.jsonl")
                          if "episode/score" in r])


def official_episodes(run_dir: Path, repeat: int, envs: int) -> tuple[list[tuple[float, float]], float]:
    """An official run's training episodes as (agent step at its end, return), and the agent step it reached.

    Upstream writes each episode's score to scores.jsonl at its step counter times the action repeat, and its
    counter counts every transition, the reset that begins each episode included: the agent steps at an episode's
    end are the counter less the resets before it (the episodes ended before it, and each env's current one).
    Exact up to one step of the envs (and `envs` more after each restart from a checkpoint).
    """
    kept = _official_scores(run_dir)
    episodes = [(step / repeat - i - envs, score) for i, (step, score) in enumerate(kept)]
    metrics = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "step" in r]
    # The last metrics write (every 120 s) tells how far it went past its last episode.
    reached = max([s for s, _ in episodes[-1:]] + [metrics[-1] / repeat - len(kept) - envs for _ in metrics[-1:]],
                  default=0.0)
    if (run_dir / DONE).is_file():
        reached = math.inf
    return episodes, reached


def official_metric(run_dir: Path, metric: str, repeat: int, envs: int) -> list[tuple[float, float]]:
    """An official run's `metric` (not "return") as (agent step, value), one per write of its metrics.jsonl: the
    step counter less the resets before it, as `official_episodes` counts them."""
    key = METRICS[metric][1]
    ends = [step for step, _ in _official_scores(run_dir)]
    rows = []
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        if metric == "rec":
            parts = [v for k, v in r.items() if k.startswith("train/loss/") and k.split("/")[-1] not in _NOT_KEYS]
            value = sum(parts) if parts else None
        else:
            value = r.get(key)
        if value is not None and "step" in r:
            rows.append((r["step"], value))
    return [(step / repeat - bisect.bisect_right(ends, step) - envs, value) for step, value in since_restart(rows)]


def rssm_metric(run_dir: Path, metric: str) -> list[tuple[float, float]]:
    """An rssm run's `metric` (not "return") as (env step, value), one per write of its metrics.jsonl, divided by
    the scale it carries (the run's config.yaml)."""
    import yaml

    _, _, key, scale_key = METRICS[metric]
    scale = 1.0
    if scale_key is not None:
        try:
            scale = float(yaml.safe_load((run_dir / "config.yaml").read_text())["wm"][scale_key])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            raise UserError(f"{run_dir / 'config.yaml'} does not give wm.{scale_key}, the scale its "
                            f"{key} carries") from None
    return [(r["step"], r[key] / scale) for r in read_jsonl(run_dir / "metrics.jsonl")
            if r.get(key) is not None and "step" in r]


def rssm_episodes(run_dir: Path) -> tuple[list[tuple[float, float]], float]:
    """An rssm run's training-episode returns as (env step of the write, mean return of the episodes that ended
    since the write before), one per write of metrics.jsonl that holds any, and the env step it reached. (A resumed
    run drops the writes after its checkpoint from the file itself; several writes may share a step.)"""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    writes = [(r["step"], r.get("episode/return")) for r in rows if "step" in r]
    episodes = [(step, value) for step, value in writes if value is not None]
    reached = math.inf if (run_dir / "model.pt").is_file() else max((s for s, _ in writes), default=0.0)
    return episodes, reached


def score_points(episodes: list[tuple[float, float]], every: int, reached: float) -> list[tuple[int, float]]:
    """At each multiple of `every` up to `reached`: the mean return of the episodes that ended in (step - every,
    step] (or of another metric's values written then). Steps without one have no point."""
    bins: dict[int, list[float]] = {}
    for step, value in episodes:
        bins.setdefault(max(1, math.ceil(step / every)), []).append(value)
    return [(k * every, float(np.mean(v))) for k, v in sorted(bins.items()) if k * every <= reached]


def find_runs(root: Path, env: str, seeds: list[int] | None = None) -> dict[str, dict[int, Path]]:
    """The run directories ROOT/ENV/IMPL/seed_S of each implementation, by seed (only `seeds`, if given).

    Raises:
        UserError: none there.
    """
    runs = {}
    for impl in IMPLS:
        found = [(int(m.group(1)), p) for p in (root / env / impl).glob("seed_*")
                 if p.is_dir() and (m := re.fullmatch(r"seed_(\d+)", p.name))
                 and (seeds is None or int(m.group(1)) in seeds)]
        runs[impl] = dict(sorted(found))
    if not any(runs.values()):
        raise UserError(f"no runs found: no {root / env}/{{official,rssm}}/seed_S directories")
    return runs


def all_points(root: Path, env: str, every: int, metric: str, repeat: int, envs: int,
               seeds: list[int] | None = None) -> dict[str, dict[int, list]]:
    """Every run's score points of `metric` (METRICS), a point every `every` agent steps, by implementation and
    seed (runs with none yet left out; only `seeds`, if given). `repeat` and `envs`: the table's, for an official
    run whose config.yaml does not say.

    Raises:
        UserError: no runs, no point yet, or `every` not positive.
    """
    if every <= 0:
        raise UserError(f"--every must be a positive number of agent steps, got {every}")
    points: dict[str, dict[int, list]] = {}
    for impl, runs in find_runs(root, env, seeds).items():
        points[impl] = {}
        for seed, run_dir in runs.items():
            if impl == "official":
                run_repeat, run_envs = official_run_settings(run_dir, repeat, envs)
                episodes, reached = official_episodes(run_dir, run_repeat, run_envs)
                if metric != "return":
                    episodes = official_metric(run_dir, metric, run_repeat, run_envs)
            else:
                episodes, reached = rssm_episodes(run_dir)
                if metric != "return":
                    episodes = rssm_metric(run_dir, metric)
            if curve := score_points(episodes, every, reached):
                points[impl][seed] = curve
    if not any(points.values()):
        raise UserError(f"the runs under {root / env} have no score point yet (a point every {every} agent steps)")
    return points


def bootstrap_difference(a: np.ndarray, b: np.ndarray, draws: int = 10_000,
                         seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95% bootstrap interval: each sample's values drawn with replacement, apart.

    Returns:
        the difference, the interval's low and high ends.
    """
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(len(a), size=(draws, len(a)))].mean(1)  # (draws,)
    means_b = b[rng.integers(len(b), size=(draws, len(b)))].mean(1)  # (draws,)
    low, high = np.percentile(means_a - means_b, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def final_returns(points: dict[str, dict[int, list]], last: int) -> tuple[dict[str, dict[int, float]], int]:
    """Per implementation and seed, the mean of the last `last` score points up to the step every run reached
    (runs still going are compared where the slowest one is), and that step."""
    end = min(curve[-1][0] for seeds in points.values() for curve in seeds.values())
    finals: dict[str, dict[int, float]] = {}
    for impl, seeds in points.items():
        finals[impl] = {}
        for seed, curve in seeds.items():
            values = [v for step, v in curve if step <= end][-last:]
            if not values:
                raise UserError(f"{impl} seed {seed} has no score point up to step {end}, where another run ends")
            finals[impl][seed] = float(np.mean(values))
    return finals, end
