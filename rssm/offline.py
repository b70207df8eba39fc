"""A world model trained from recorded data instead of an env: `agent=world_model offline.minari=ID` (a Minari
dataset) or `offline.replay=RUN_DIR` (another run's replay: its chunk files, and the rows after the last of them
that its checkpoint keeps; a run of fewer steps than replay.chunk, such as `experiment=debug`'s, has only those).

The episodes are split by the run's seed: a share `offline.holdout` of them (at least one) is held out, and the
world model trains on the rest for `offline.updates` updates of `replay.batch_size` x `replay.batch_length`
steps. `trainer.log_every`, `trainer.openloop_every` and `trainer.checkpoint_every` count updates here. The run
writes config.yaml, checkpoint.pt and model.pt as an online run does, so `rssm.load` and `rssm.DreamEnv` take
it, and `resume=` continues a stopped one.

The held-out episodes give the open-loop prediction errors per horizon (`rssm.openloop`: the posterior sees
`trainer.openloop_context` steps, the prior predicts alone), on 4 batches of held-out sequences drawn once by the
seed. A sequence counts at horizon k only if no episode starts among the k steps predicted, so the longer
horizons average over fewer sequences (an episode shorter than the context and the horizon counts at most with
a context that began in the episode before). Each error is the mean over the sequences that count, next to the
error of a prediction without a model on the same sequences (`rssm.openloop.baseline_errors`: the last
observation of the context predicted again; the context's mean reward). They are logged as
`heldout/{obs,reward,cont}_error_hK` and `heldout/{obs_error_last_seen,reward_error_context_mean}_hK`, and at
the end written to RUN_DIR/heldout.json: the run's source, updates, episodes and context, `sequences_drawn`,
what the `baselines` predict, and `horizons`, one record per horizon in increasing order with the `sequences`
and `episodes` its errors average over and each error of the model followed by its baseline's (null where no
sequence counts).

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
import torch
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
from rssm.openloop import baseline_errors, scored, sequence_errors
from rssm.replay import Layout, Replay, check_chunk, chunk_files, chunk_streams, layout, read_chunk
from rssm.replay_read import checkpoint_tails
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
    """The episodes in another run's replay (every rank's shard): its chunk files, and after the last of them the
    rows its checkpoint keeps (`rssm.replay_read.checkpoint_tails`; a run of fewer steps than replay.chunk has only
    those), each env's stream split at its episode starts; the last, unfinished episode of a stream is kept as it
    is. Every chunk is checked against the first one's layout (`check_chunk`), and that against the env's spaces."""
    run_dir = Path(run_dir).expanduser()
    episodes, expected, file_rows = [], None, None
    for sources in _replay_sources(run_dir):
        for stream in chunk_streams(sources):
            chunks = []
            for index in stream:
                if isinstance(sources[index], Path):
                    where, arrays = sources[index], read_chunk(sources[index])
                    rows = file_rows = file_rows or len(arrays["is_first"])
                else:  # the checkpoint's rows: the chunk the run would have written next
                    where, arrays = f"{index:06d} as {run_dir / CHECKPOINT} keeps it", sources[index]
                    rows = len(arrays["is_first"])
                expected = expected or _replay_layout(run_dir, where, arrays, spec)
                check_chunk(where, arrays, {k: ((rows, *shape[1:]), dtype) for k, (shape, dtype) in expected.items()},
                            doing="train on", whose="the first chunk's")
                chunks.append(arrays)
            # (rows, envs, ...); the model states a replay context stored are the other run's, not data
            data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if not k.startswith("latent_")}
            for env in range(data["is_first"].shape[1]):
                column = {k: v[:, env] for k, v in data.items()}
                starts = [*np.flatnonzero(column["is_first"]), len(column["is_first"])]
                episodes += [{k: v[a:b] for k, v in column.items()} for a, b in pairwise(starts) if b > a]
    if not episodes:
        raise UserError(f"{run_dir} holds no replay chunks (replay/chunk_*.npz) and no {CHECKPOINT} with the rows "
                        f"after them to train on")
    return episodes


def _replay_sources(run_dir: Path) -> list[dict[int, Path | dict[str, np.ndarray]]]:
    """Each rank's replay (one for a run in one process) by chunk index, in order: the chunk files, and the rows
    the checkpoint keeps at the index of the chunk they would have been written as, unless a file of that index
    exists (the run went on after its checkpoint): that holds them and more."""
    replay = run_dir / "replay"
    tails = checkpoint_tails(run_dir / CHECKPOINT)
    ranks = {int(p.name[5:]): p for p in replay.glob("rank_*") if p.name[5:].isdigit()}
    if ranks or len(tails) > 1:  # a torchrun job's shards, replay/rank_R
        shards = [(ranks.get(r, replay / f"rank_{r}"), tails[r] if r < len(tails) else None)
                  for r in sorted({*ranks, *range(len(tails))})]
    else:
        shards = [(replay, tails[0])]
    sources = []
    for directory, tail in shards:
        found: dict[int, Path | dict[str, np.ndarray]] = dict(chunk_files(directory))
        if tail is not None and tail[0] not in found:
            found = dict(sorted({**found, tail[0]: tail[1]}.items()))
        sources.append(found)
    return sources


def _replay_layout(run_dir: Path, path: Path | str, arrays: dict[str, np.ndarray], spec: EnvSpec) -> Layout:
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


def fill(replay: Replay, episodes: list[Episode], numbered: bool = False) -> Replay:
    """Append the episodes to a one-env replay, one row at a time; `numbered`: with a field `episode`, the index
    of each row's episode in `episodes`."""
    for i, episode in enumerate(episodes):
        if numbered:
            episode = {**episode, "episode": np.full(len(episode["is_first"]), i)}
        for t in range(len(episode["is_first"])):
            replay.add({k: v[t][None] for k, v in episode.items()})
    return replay


def heldout_sequences(cfg: DictConfig, held: Replay, device: torch.device,
                      batches: int = 4) -> list[dict[str, torch.Tensor]]:
    """`batches` batches of `replay.batch_size` held-out sequences of trainer.openloop_context + the longest horizon
    steps, drawn by the run's seed (the same in a resumed run), as tensors on `device`. `held` is `fill`ed
    `numbered`, so that each sequence's `episode` says which held-out episode each of its steps is of."""
    t = cfg.trainer
    rng = np.random.default_rng([cfg.seed, 1])
    length = t.openloop_context + max(t.openloop_horizons)
    return [to_torch(held.sample(cfg.replay.batch_size, length, rng), device) for _ in range(batches)]


def heldout_errors(cfg: DictConfig, agent: Agent, sequences: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """The open-loop errors of the world model (`rssm.openloop.sequence_errors`) and the baselines'
    (`baseline_errors`) on the held-out `sequences`, each the mean over the sequences that count at each horizon
    (`scored`, as `heldout_counts` counts them; NaN where none does), with the same random numbers every time.

    Returns:
        Each error's name (`obs_error`, `obs_error_last_seen`, ... as those functions name them) and its means at
        the horizons 1..max(trainer.openloop_horizons), (H,) float64.
    """
    context, H = cfg.trainer.openloop_context, max(cfg.trainer.openloop_horizons)
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(H, device=agent.device)
    with seeded(cfg.seed, agent.device):
        for batch in sequences:
            valid = scored(batch["is_first"], context, H)  # (B, H)
            errors = {**sequence_errors(agent.wm, batch, context, H), **baseline_errors(agent.wm, batch, context, H)}
            for name, error in errors.items():  # each (B, H)
                sums[name] = sums.get(name, 0) + torch.where(valid, error.float(), 0.0).sum(0)  # (H,)
            counts += valid.sum(0)
    return {name: (total / counts).double().cpu().numpy() for name, total in sums.items()}  # 0 / 0: NaN


def heldout_counts(cfg: DictConfig, sequences: list[dict[str, torch.Tensor]]) -> tuple[list[int], list[int]]:
    """At each horizon 1..max(trainer.openloop_horizons): how many of the held-out `sequences` count
    (`rssm.openloop.scored`: no episode starts among the steps predicted up to it), and how many held-out episodes
    those predict (steps of)."""
    context, H = cfg.trainer.openloop_context, max(cfg.trainer.openloop_horizons)
    counts, episodes = [0] * H, [set() for _ in range(H)]
    for batch in sequences:
        valid = scored(batch["is_first"], context, H).cpu()  # (B, H)
        predicted = batch["episode"][:, context:context + H].cpu()  # (B, H): the episode of each target step
        for k in range(H):
            counts[k] += int(valid[:, k].sum())
            episodes[k].update(predicted[valid[:, k], k].tolist())
    return counts, [len(e) for e in episodes]


def heldout_scalars(cfg: DictConfig, errors: dict[str, np.ndarray]) -> dict[str, float]:
    """`heldout_errors` at trainer.openloop_horizons as scalars to log, `heldout/{name}_h{k}`; NaN ones left out."""
    return {f"heldout/{name}_h{k}": float(v[k - 1]) for name, v in errors.items()
            for k in cfg.trainer.openloop_horizons if math.isfinite(v[k - 1])}


BASELINES = {"obs_error_last_seen": "the context's last observation, predicted again for every step",
             "reward_error_context_mean": "the mean reward of the context's steps in the episode predicted, "
                                          "predicted for every step"}


def heldout_horizons(cfg: DictConfig, errors: dict[str, np.ndarray], counts: tuple[list[int], list[int]]) -> list[dict]:
    """heldout.json's `horizons`: for each of trainer.openloop_horizons in increasing order, the sequences and
    episodes its errors average over, then each error of the model followed by its baseline's, to 6 significant
    digits; None (null) for an error no sequence counts in."""
    model = [name for name in errors if not name.endswith(("_last_seen", "_context_mean"))]
    records = []
    for k in sorted(cfg.trainer.openloop_horizons):
        record = {"horizon": k, "sequences": counts[0][k - 1], "episodes": counts[1][k - 1]}
        for name in model:
            for key in (n for n in (name, f"{name}_last_seen", f"{name}_context_mean") if n in errors):
                error = float(errors[key][k - 1])
                record[key] = float(f"{error:.6g}") if math.isfinite(error) else None
        records.append(record)
    return records


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
    held = fill(Replay(max(held_steps, 1), cfg.seed, None, cfg.replay.chunk), held_eps, numbered=True)
    sequences = heldout_sequences(cfg, held, agent.device)
    updates = _resume(cfg, agent, replay) if cfg.resume else 0
    write_run_config(run_dir, cfg, overrides)
    steps = sum(len(e["is_first"]) for e in train_eps)
    status(f"rssm: {env_id(cfg)} offline from {offline_source(cfg)} on {agent.device}: {len(train_eps)} "
           f"episodes ({steps:,} steps) to train on, {len(held_eps)} held out ({held_steps:,} steps); world model "
           f"{sum(p.numel() for p in agent.wm.parameters()):,} parameters; run dir {run_dir}")
    if updates:
        status(f"rssm: resumed from {run_dir / CHECKPOINT} at update {updates}")
    logger = Logger(cfg, run_dir, t.progress, start=updates, total=cfg.offline.updates, unit="update")
    tracker, last, clock, errors = MeanTracker(), {}, (time.perf_counter(), updates), None
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
                    errors = heldout_errors(cfg, agent, sequences)
                    logger.scalars(heldout_scalars(cfg, errors), updates)
                    last.update(heldout_scalars(cfg, errors))
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
    if errors is None:  # a finished run resumed: no update ran
        errors = heldout_errors(cfg, agent, sequences)
    report = {"source": offline_source(cfg), "updates": updates, "train_episodes": len(train_eps),
              "heldout_episodes": len(held_eps), "context": t.openloop_context,
              "sequences_drawn": sum(len(b["is_first"]) for b in sequences), "baselines": BASELINES,
              "horizons": heldout_horizons(cfg, errors, heldout_counts(cfg, sequences))}
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
