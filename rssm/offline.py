"""A world model trained from recorded data instead of an env: `agent=world_model offline.minari=ID` (a Minari
dataset) or `offline.replay=RUN_DIR` (another run's replay chunks).

The episodes are split by the run's seed: a share `offline.holdout` of them (at least one) is held out, and the
world model trains on the rest for `offline.updates` updates of `replay.batch_size` x `replay.batch_length`
steps. `trainer.log_every`, `trainer.openloop_every` and `trainer.checkpoint_every` count updates here. The
held-out episodes give the open-loop prediction errors per horizon (`rssm.openloop`: the posterior sees
`trainer.openloop_context` steps, the prior predicts alone) as `heldout/...` scalars and, at the end, in
RUN_DIR/heldout.json. The run writes config.yaml, checkpoint.pt and model.pt as an online run does, so
`rssm.load` and `rssm.DreamEnv` take it, and `resume=` continues a stopped one.

The env config still names the env (`env=...`): the model's size and the spaces come from it, and the data must
have the same observation and action spaces.
"""

from __future__ import annotations

import importlib
import json
import math
import signal
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rssm.agent import Agent, to_torch
from rssm.build import build_agent, build_env, env_id, resolve_device
from rssm.checkpoint import (
    CHECKPOINT,
    check_shapes,
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_model,
    seeded,
    set_rng_state,
)
from rssm.cli import write_run_config
from rssm.collector import blank_transition, transition
from rssm.config import UserError, check_changes
from rssm.envs import EnvSpec, env_spec, from_env_action, install
from rssm.files import atomic_write
from rssm.host import setup_host
from rssm.logging import Logger, MeanTracker
from rssm.messages import status
from rssm.openloop import open_loop_errors
from rssm.replay import Layout, Replay, check_chunk, chunk_files, chunk_streams, layout, read_chunk
from rssm.run_state import RunStopped, StopRequested, crossed, seed_everything

Episode = dict[str, np.ndarray]  # a transition's fields, each (T + 1, ...): the first observation, then T steps


def offline_source(cfg: DictConfig) -> str:
    """What an offline run trains on, in words; "" for a run in an env."""
    o = cfg.offline
    return f"Minari dataset '{o.minari}'" if o.minari else f"the replay of {o.replay}" if o.replay else ""


def episode_rows(spec: EnvSpec, observations, actions, rewards, terminations) -> Episode:
    """One recorded episode in the replay's layout: row t holds obs[t] and the action, reward and terminal flag of
    the step that led to it (none before the first). observations (T + 1, ...) or a dict of them, env actions (T,
    ...), rewards (T,), terminations (T,)."""
    T = len(rewards)
    before = np.concatenate([np.zeros((1, spec.action_dim), np.float32), from_env_action(actions, spec)])
    first = np.arange(T + 1) == 0
    terminal = np.concatenate([[False], np.asarray(terminations, bool)])
    return transition(spec, observations, before, np.concatenate([[0.0], rewards]), first, terminal)


def _same_spaces(spec: EnvSpec, other: EnvSpec) -> bool:
    bounds = [(spec.low, other.low), (spec.high, other.high)]
    return (spec.obs_shapes == other.obs_shapes and spec.action_dims == other.action_dims
            and spec.discrete == other.discrete and all(np.array_equal(a, b) for a, b in bounds if a is not None))


def minari_episodes(dataset_id: str, spec: EnvSpec) -> list[Episode]:
    """The episodes of a Minari dataset's local copy, checked against the env's spaces."""
    try:
        minari = importlib.import_module("minari")
    except ImportError:
        raise UserError(f"offline.minari needs the minari package: {install('minari')}") from None
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as e:  # noqa: BLE001 - minari's errors for a missing, misnamed or unreadable dataset
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the Minari dataset '{dataset_id}' ({detail}); datasets are read from "
                        f"MINARI_DATASETS_PATH or ~/.minari/datasets (`minari download {dataset_id}` puts one "
                        f"there)") from None
    try:
        theirs = env_spec(dataset.spec.observation_space, dataset.spec.action_space)
    except UserError as e:
        raise UserError(f"Minari dataset '{dataset_id}': {e}") from None
    if not _same_spaces(spec, theirs):
        raise UserError(f"Minari dataset '{dataset_id}' has observations {theirs.obs_shapes} and actions "
                        f"{dataset.spec.action_space}, the env {spec.obs_shapes} and {_action_words(spec)}: pick the "
                        f"env the data was recorded in (env=..., env.id=...)")
    return [episode_rows(spec, ep.observations, ep.actions, ep.rewards, ep.terminations)
            for ep in dataset.iterate_episodes()]


def _action_words(spec: EnvSpec) -> str:
    return f"{'discrete' if spec.discrete else 'continuous'} actions {spec.action_dims}"


def replay_episodes(run_dir: Path, spec: EnvSpec) -> list[Episode]:
    """The episodes in another run's replay chunks (every rank's shard), each env's stream split at its episode
    starts; the last, unfinished episode of a stream is kept as it is. Every chunk is checked against the first
    one's layout (`check_chunk`), and that against the env's spaces."""
    run_dir = Path(run_dir).expanduser()
    shards = sorted((run_dir / "replay").glob("rank_*")) or [run_dir / "replay"]
    episodes, expected = [], None
    for shard in shards:
        files = chunk_files(shard)
        for stream in chunk_streams(files):
            chunks = []
            for index in stream:
                arrays = read_chunk(files[index])
                expected = expected or _replay_layout(run_dir, files[index], arrays, spec)
                check_chunk(files[index], arrays, expected, doing="train on", whose="the first chunk's")
                chunks.append(arrays)
            # (rows, envs, ...); the model states a replay context stored are the other run's, not data
            data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if not k.startswith("latent_")}
            for env in range(data["is_first"].shape[1]):
                column = {k: v[:, env] for k, v in data.items()}
                starts = [*np.flatnonzero(column["is_first"]), len(column["is_first"])]
                episodes += [{k: v[a:b] for k, v in column.items()} for a, b in pairwise(starts) if b > a]
    if not episodes:
        raise UserError(f"{run_dir} holds no replay chunks (replay/chunk_*.npz) to train on")
    return episodes


def _replay_layout(run_dir: Path, path: Path, arrays: dict[str, np.ndarray], spec: EnvSpec) -> Layout:
    """The layout of another run's first chunk `arrays` (at `path`), which every chunk must share, once it is
    found to hold the fields of transitions in the env of `spec`."""
    if missing := [k for k in blank_transition(spec) if k not in arrays]:
        raise UserError(f"cannot train on replay chunk {path}: it lacks {', '.join(map(repr, missing))}")
    shapes = {k: arrays[k].shape[2:] for k in spec.obs_shapes}
    if shapes != spec.obs_shapes or arrays["action"].shape[2:] != (spec.action_dim,):
        raise UserError(f"the replay of {run_dir} has observations {shapes} and actions of "
                        f"{arrays['action'].shape[2:]}, the env {spec.obs_shapes} and {spec.action_dim}: pick "
                        f"the env the run trained in")
    return layout(arrays)


def split(episodes: list[Episode], share: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Training and held-out episodes: `share` of them (at least one) held out, drawn by `seed`."""
    if len(episodes) < 2:
        raise UserError(f"the data holds {len(episodes)} episode: at least 2 are needed, one to hold out")
    order = np.random.default_rng(seed).permutation(len(episodes))
    held = max(1, round(share * len(episodes)))
    return [episodes[i] for i in sorted(order[held:])], [episodes[i] for i in sorted(order[:held])]


def fill(replay: Replay, episodes: list[Episode]) -> Replay:
    """Append the episodes to a one-env replay, one row at a time."""
    for episode in episodes:
        for t in range(len(episode["is_first"])):
            replay.add({k: v[t][None] for k, v in episode.items()})
    return replay


def heldout_errors(cfg: DictConfig, agent: Agent, held: Replay, batches: int = 4) -> dict[str, float]:
    """Open-loop errors on `batches` batches of held-out sequences, the same ones every time (their own random
    numbers): `heldout/{obs,reward,cont}_error_hK`."""
    t = cfg.trainer
    rng = np.random.default_rng([cfg.seed, 1])
    length = t.openloop_context + max(t.openloop_horizons)
    totals: dict[str, list[float]] = {}
    with seeded(cfg.seed, agent.device):
        for _ in range(batches):
            batch = to_torch(held.sample(cfg.replay.batch_size, length, rng), agent.device)
            for k, v in open_loop_errors(agent.wm, batch, t.openloop_context, t.openloop_horizons).items():
                if math.isfinite(v.item()):
                    totals.setdefault(k.replace("openloop/", "heldout/"), []).append(v.item())
    return {k: float(np.mean(v)) for k, v in sorted(totals.items())}


def _episodes(cfg: DictConfig, spec: EnvSpec) -> tuple[list[Episode], list[Episode]]:
    """The training and held-out episodes of the data `cfg.offline` names."""
    if cfg.offline.minari and cfg.offline.replay:
        raise UserError("give offline.minari or offline.replay, not both")
    if cfg.offline.minari:
        episodes = minari_episodes(cfg.offline.minari, spec)
    else:
        episodes = replay_episodes(Path(cfg.offline.replay), spec)
    train_eps, held_eps = split(episodes, cfg.offline.holdout, cfg.seed)
    t = cfg.trainer
    length = t.openloop_context + max(t.openloop_horizons)
    held_steps = sum(len(e["is_first"]) for e in held_eps)
    if held_steps < length:
        raise UserError(f"the held-out episodes hold {held_steps} steps, fewer than one sequence of "
                        f"trainer.openloop_context + the longest horizon = {length}: raise offline.holdout")
    train_steps = sum(len(e["is_first"]) for e in train_eps)
    if train_steps < cfg.replay.batch_length:
        raise UserError(f"offline.holdout={cfg.offline.holdout} leaves {len(train_eps)} of the {len(episodes)} "
                        f"episodes to train on, {train_steps} steps, fewer than one sequence of "
                        f"replay.batch_length={cfg.replay.batch_length}: lower offline.holdout")
    return train_eps, held_eps


def train_offline(cfg: DictConfig, run_dir: Path, overrides: list[str] | None) -> dict[str, float]:
    """Train the world model on the recorded data `cfg.offline` names (see the module's text). Returns the last
    logged metrics."""
    if cfg.agent.kind != "world_model":
        raise UserError(f"offline training trains a world model alone: add agent=world_model (not "
                        f"agent={cfg.agent.kind}; an actor needs an env to act in)")
    seed_everything(cfg.seed)
    setup_host(cfg.threads)
    env, spec = build_env(cfg)
    env.close()
    train_eps, held_eps = _episodes(cfg, spec)
    t = cfg.trainer
    held_steps = sum(len(e["is_first"]) for e in held_eps)
    agent = build_agent(cfg, spec, resolve_device(cfg.device))
    replay = fill(Replay(cfg.replay.capacity, cfg.seed, None, cfg.replay.chunk), train_eps)
    held = fill(Replay(max(held_steps, 1), cfg.seed, None, cfg.replay.chunk), held_eps)
    updates = _resume(cfg, agent, replay) if cfg.resume else 0
    write_run_config(run_dir, cfg, overrides)
    steps = sum(len(e["is_first"]) for e in train_eps)
    status(f"rssm: {env_id(cfg)} offline from {offline_source(cfg)} on {agent.device}: {len(train_eps)} "
           f"episodes ({steps:,} steps) to train on, {len(held_eps)} held out ({held_steps:,} steps); world model "
           f"{sum(p.numel() for p in agent.wm.parameters()):,} parameters; run dir {run_dir}")
    if updates:
        status(f"rssm: resumed from {run_dir / CHECKPOINT} at update {updates}")
    logger = Logger(cfg, run_dir, t.progress, start=updates, total=cfg.offline.updates, unit="update")
    tracker, last, clock = MeanTracker(), {}, (time.perf_counter(), updates)
    with StopRequested() as stop:
        try:
            while updates < cfg.offline.updates and not stop.signum:
                tracker.add(agent.update(replay.sample(cfg.replay.batch_size, cfg.replay.batch_length)))
                updates += 1
                end = updates == cfg.offline.updates
                if crossed(updates - 1, updates, t.log_every) or end:
                    last = {**tracker.means(), "perf/updates_per_s": (updates - clock[1]) / (time.perf_counter()
                                                                                            - clock[0])}
                    logger.scalars(last, updates)
                    clock = time.perf_counter(), updates
                if crossed(updates - 1, updates, t.openloop_every) or end:
                    errors = heldout_errors(cfg, agent, held)
                    logger.scalars(errors, updates)
                    last.update(errors)
                if crossed(updates - 1, updates, t.checkpoint_every) and not end:
                    _save(run_dir, cfg, agent, replay, updates)
                logger.progress(updates)
            _save(run_dir, cfg, agent, replay, updates)
            save_model(agent, run_dir / "model.pt")
        finally:
            logger.close()
    if stop.signum:
        raise RunStopped(f"stopped by {signal.Signals(stop.signum).name} at update {updates}; checkpoint saved, "
                         f"continue with: rssm-train resume={run_dir}", 128 + stop.signum)
    report = {"source": offline_source(cfg), "updates": updates, "train_episodes": len(train_eps),
              "heldout_episodes": len(held_eps), "context": t.openloop_context,
              "errors": {k.removeprefix("heldout/"): v for k, v in last.items() if k.startswith("heldout/")}}
    atomic_write(run_dir / "heldout.json", lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    return last


def _save(run_dir: Path, cfg: DictConfig, agent: Agent, replay: Replay, updates: int) -> None:
    state = {"config": OmegaConf.to_container(cfg, resolve=True), "agent": agent.state_dict(),
             "offline": {"updates": updates, "sampler": replay.rng.bit_generator.state, "rng": rng_state()}}
    save_checkpoint(run_dir / CHECKPOINT, state)


def _resume(cfg: DictConfig, agent: Agent, replay: Replay) -> int:
    path = checkpoint_path(cfg.resume)
    state = load_checkpoint(path)
    if "offline" not in state:
        raise UserError(f"{path} is the checkpoint of a run in an env, not of an offline run")
    check_changes(state["config"], cfg, path)
    for name, module in agent.modules().items():
        check_shapes(path, name, state["agent"].get(name, {}), module.state_dict())
    agent.load_state_dict(state["agent"])
    replay.rng.bit_generator.state = state["offline"]["sampler"]
    set_rng_state(state["offline"]["rng"])
    return int(state["offline"]["updates"])
