"""Reads the training-episode returns of both implementations' runs back as agent steps, and compares them:
the score points and the bootstrap interval that `scripts/parity.py` (`scores`, `compare`, `plot`) reports.

Both implementations' scores are the returns of their training episodes, played by the sampled (exploring) policy,
as upstream's published curves are. Upstream writes each episode's return at its step counter, which counts
control steps (times the env's action repeat) and each episode's reset as a step: the official steps here are agent
steps without them, as rssm's are. rssm writes the mean return of the episodes that ended since its last write, at
every step of its envs (`trainer.log_every` = envs): a score point averages those writes (all 16 episodes of a DMC
wave end in one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from rssm.config import UserError

DONE = "parity_done.json"  # written into an official run's logdir once upstream ended its run: it is finished


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


def official_episodes(run_dir: Path, repeat: int, envs: int) -> tuple[list[tuple[float, float]], float]:
    """An official run's training episodes as (agent step at its end, return), and the agent step it reached.

    Upstream writes each episode's score to scores.jsonl at its step counter times the action repeat, and its
    counter counts every transition, the reset that begins each episode included: the agent steps at an episode's
    end are the counter less the resets before it (the episodes ended before it, and each env's current one).
    Exact up to one step of the envs (and `envs` more after each restart from a checkpoint).
    """
    rows = [(r["step"], r["episode/score"]) for r in read_jsonl(run_dir / "scores.jsonl") if "episode/score" in r]
    kept = since_restart(rows)
    episodes = [(step / repeat - i - envs, score) for i, (step, score) in enumerate(kept)]
    metrics = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "step" in r]
    # The last metrics write (every 120 s) tells how far it went past its last episode.
    reached = max([s for s, _ in episodes[-1:]] + [metrics[-1] / repeat - len(kept) - envs for _ in metrics[-1:]],
                  default=0.0)
    if (run_dir / DONE).is_file():
        reached = math.inf
    return episodes, reached


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
    step]. Steps without an episode have no point."""
    bins: dict[int, list[float]] = {}
    for step, value in episodes:
        bins.setdefault(max(1, math.ceil(step / every)), []).append(value)
    return [(k * every, float(np.mean(v))) for k, v in sorted(bins.items()) if k * every <= reached]


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
