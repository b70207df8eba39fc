"""The training loop, and `rssm-train [overrides]` (or `python -m rssm.train`), the hydra app that runs it.

`rssm.build` turns the config into objects; `rssm.cli` holds what the app adds to hydra.
"""

from __future__ import annotations

import math
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rssm.agent import Agent, NonFiniteModel, to_torch
from rssm.build import build_agent, build_envs, env_id, resolve_device
from rssm.checkpoint import CHECKPOINT, checkpoint_path, load_checkpoint, restore_run, save_run
from rssm.cli import (
    OVERRIDES,
    PROG,
    HeldStderr,
    fail,
    merge_overrides,
    register_resolvers,
    resumed_config,
    with_general_env,
)
from rssm.collector import Collector, EnvFailing, blank_transition
from rssm.config import UserError, check_changes, register_configs, validate
from rssm.envs import EnvSpec, random_action
from rssm.evaluate import run_episodes
from rssm.files import atomic_write, lock_run_dir, remove_leftovers
from rssm.logging import Logger, MeanTracker
from rssm.openloop import open_loop_errors, open_loop_video, predict_open_loop
from rssm.replay import Replay
from rssm.rssm import RSSMState
from rssm.world_model import WorldModel


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def replay_line(spec: EnvSpec, wm: WorldModel, capacity: int) -> str:
    """Each observation key with where it goes, and the replay's memory when full (capacity x bytes per
    transition)."""
    example = blank_transition(spec)
    per = sum(v.nbytes for v in example.values())
    where = {**dict.fromkeys(wm.image_keys, "CNN"), **dict.fromkeys(wm.vector_keys, "MLP")}
    keys = ", ".join(f"{k} {'x'.join(map(str, s))} {example[k].dtype} -> {where.get(k, 'not modelled')}"
                     for k, s in spec.obs_shapes.items())
    total = capacity * per
    size = f"{total / 1e9:.2f} GB" if total >= 1e9 else f"{total / 1e6:.1f} MB"
    return f"observations: {keys}; replay: {capacity:,} transitions x {per:,} bytes = {size} when full"


def evaluate(agent: Agent, cfg: DictConfig, episodes: int, steps: int = 0,
             stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """Mean and spread of the mode policy's returns, on a fresh env playing its episodes one after another
    (restarted if it fails, as in training). None if `stop()` said yes between two env steps. The model's
    latents are sampled from their own random numbers (seeded by the env step `steps`): training goes on the
    same whether an evaluation ran, and one redone after a resume gives the same result."""
    envs, spec = build_envs(cfg, num=1)
    try:
        with torch.random.fork_rng(devices=[agent.device] if agent.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed + 10_000 + steps)
            played = run_episodes(agent, envs, spec, episodes, seed=cfg.seed + 10_000, stop=stop,
                                  remake=lambda: build_envs(cfg, num=1)[0])
    finally:
        envs.close()
    if played is None:
        return None
    returns = played[0]
    return {"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
            "eval/return_min": float(np.min(returns)), "eval/return_max": float(np.max(returns))}


def save_model(agent: Agent, path: Path) -> None:
    state = {"world_model": agent.wm.state_dict()}
    if agent.actor is not None:
        state.update(actor=agent.actor.state_dict(), critic=agent.critic.state_dict())
    atomic_write(path, lambda f: torch.save(state, f))


@dataclass
class Progress:
    """The training loop's own state (the collector and agent keep theirs): its counters, and what it carries
    from one env step to the next, so that a resumed run goes on as the run that was never stopped."""

    updates: int = 0
    updates_due: float = 0.0  # fractional updates owed under the train ratio
    last_return: float = float("nan")
    actions: np.ndarray | None = None  # the next env step's actions (N, A); None: random ones at the start
    actor_state: RSSMState | None = None  # the actor's model state after the latest transitions (batch N)
    tracker: MeanTracker = field(default_factory=MeanTracker)  # metrics since the last log
    eval_pending: bool = False  # a signal abandoned the evaluation due at this step: the resumed run does it

    def state_dict(self) -> dict:
        """Numbers, arrays and CPU tensors (`rssm.checkpoint.to_tensors` makes the arrays tensors)."""
        state = None if self.actor_state is None else {k: v.cpu() for k, v in self.actor_state._asdict().items()}
        return {"updates": self.updates, "updates_due": self.updates_due, "last_return": self.last_return,
                "actions": self.actions, "actor_state": state, "tracker": self.tracker.state_dict(),
                "eval_pending": self.eval_pending}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> Progress:
        """Rebuild from `state_dict` as a checkpoint holds it; a checkpoint from before the loop's state was
        saved has the counters only."""
        progress = cls(state["updates"], state["updates_due"], state["last_return"])
        progress.eval_pending = bool(state.get("eval_pending", False))
        if state.get("actions") is not None:
            progress.actions = np.asarray(state["actions"])
        if state.get("actor_state") is not None:
            progress.actor_state = RSSMState(**{k: v.to(device) for k, v in state["actor_state"].items()})
        progress.tracker.load_state_dict(state.get("tracker", {}), device)
        return progress


class StopRequested:
    """Turns SIGINT and SIGTERM into a flag the loop and evaluation check between env steps (main thread only).
    Installed for the whole run, checkpoint save included: a second signal during the save is noted, never
    raised inside it."""

    def __init__(self):
        self.signum, self._previous = 0, {}

    def __enter__(self) -> StopRequested:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum  # the first signal names the stop

    def __call__(self) -> bool:
        return bool(self.signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunStopped(Exception):
    """The run stopped early (signal, diverging losses); `status` is the process exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def resume_checkpoint(cfg: DictConfig) -> tuple[Path, dict]:
    """Load the checkpoint `cfg.resume` names and check that `cfg` matches the run's config."""
    path = checkpoint_path(cfg.resume)
    state = load_checkpoint(path)
    missing = {"config", "agent", "replay", "collector", "progress", "rng"} - state.keys()
    if missing:
        raise UserError(f"cannot load checkpoint {path}: it lacks {', '.join(sorted(missing))}")
    if not state["config"].get("replay", {}).get("save", True):
        raise UserError(f"cannot resume {path}: its run had replay.save=false, so its replay was not saved (its "
                        f"weights are in {path.parent / 'model.pt'} once it stopped or ended)")
    if not cfg.replay.save:
        raise UserError(f"replay.save=false cannot be given to resume {path}: the run's replay is saved and stays so")
    check_changes(state["config"], cfg, path)
    return path, state


def train(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, float]:
    """Train the agent the config describes. Writes TensorBoard events, `checkpoint.pt`, `replay/` (unless
    `replay.save` is false), `model.pt`, `config.yaml` and the command line's `overrides` (`overrides.yaml`, read
    when the run is resumed from the command line) to `run_dir` (with `cfg.resume`: to the resumed run's
    directory), holding an exclusive lock on it for the run's life. Returns the last logged metrics.

    Raises:
        UserError: bad config, unusable or busy run directory, a file that cannot be written (full disk).
        RunStopped: after a signal (checkpoint saved, status 128 + signum); envs that keep failing (checkpoint
            saved, status 1); a diverged model: too many non-finite updates in a row, or a non-finite state when
            acting (last checkpoint kept, status 1).
    """
    validate(cfg)
    run_dir = checkpoint_path(cfg.resume).parent if cfg.resume else Path(run_dir)
    lock = lock_run_dir(run_dir)
    try:
        resumed = resume_checkpoint(cfg) if cfg.resume else None
        if not resumed and (run_dir / CHECKPOINT).exists():
            raise UserError(f"{run_dir} already holds a run: continue it with {PROG} "
                            f"resume={shlex.quote(str(run_dir))} or pick another dir")
        remove_leftovers(run_dir)  # of a writer killed mid-write; none can be writing: we hold the lock
        return _train(cfg, run_dir, resumed, overrides)
    except KeyboardInterrupt:  # Ctrl-C while the run was being set up, before its handler was installed
        raise RunStopped(f"stopped by SIGINT while the run in {run_dir} was starting; no checkpoint was written",
                         128 + signal.SIGINT) from None
    finally:
        lock.close()


def _train(cfg: DictConfig, run_dir: Path, resumed: tuple[Path, dict] | None,
           overrides: list[str] | None) -> dict[str, float]:
    seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)

    def remake_envs():
        return build_envs(cfg)[0]

    envs, spec = build_envs(cfg)
    agent = build_agent(cfg, spec, device)
    replay_dir = run_dir / "replay" if cfg.replay.save else None
    replay = Replay(cfg.replay.capacity, cfg.seed, replay_dir, cfg.replay.chunk, envs.num_envs)
    collector = Collector(envs, spec, cfg.seed, remake=remake_envs)
    rng = np.random.default_rng(cfg.seed)
    progress = Progress.from_state_dict(restore_run(*resumed, agent, replay, collector, rng), device) if resumed \
        else Progress()
    atomic_write(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg).encode()))
    if overrides is not None:
        atomic_write(run_dir / OVERRIDES, lambda f: f.write(OmegaConf.to_yaml(list(overrides)).encode()))
    counts = {"world model": agent.wm, "actor": agent.actor, "critic": agent.critic}
    sizes = ", ".join(f"{k} {sum(p.numel() for p in v.parameters()):,}" for k, v in counts.items() if v is not None)
    print(f"rssm: {env_id(cfg)} on {device}, agent={cfg.agent.kind}; parameters: {sizes}; run dir {run_dir}",
          flush=True)
    print(f"rssm: {replay_line(spec, agent.wm, replay.capacity * replay.envs)}", flush=True)
    if resumed:
        print(f"rssm: resumed from {resumed[0]} at env step {collector.env_steps}, update {progress.updates}",
              flush=True)

    def save() -> None:
        save_run(run_dir / CHECKPOINT, cfg, agent, replay, collector, progress, rng)

    with StopRequested() as stop:  # until the end: a signal during the save must not interrupt it
        try:
            last = _loop(cfg, run_dir, agent, replay, collector, progress, rng, stop)
            save()
            if not stop.signum or not cfg.replay.save:  # without a saved replay, the weights are all there is
                save_model(agent, run_dir / "model.pt")
        except EnvFailing as e:  # the run's state is whole: keep it
            save()
            raise RunStopped(f"{e}; checkpoint saved at env step {collector.env_steps}, continue with: {PROG} "
                             f"resume={shlex.quote(str(run_dir))} once the env is fixed", 1) from None
        except NonFiniteModel as e:
            raise RunStopped(f"{e} at env step {collector.env_steps}; stopped, the last checkpoint in {run_dir} is "
                             f"kept", 1) from None
        finally:
            collector.envs.close()
    if stop.signum and not cfg.replay.save:
        raise RunStopped(f"stopped by {signal.Signals(stop.signum).name} at env step {collector.env_steps}; "
                         f"weights saved to {run_dir / 'model.pt'} (replay.save=false: the run cannot be resumed)",
                         128 + stop.signum)
    if stop.signum:
        raise RunStopped(f"stopped by {signal.Signals(stop.signum).name} at env step {collector.env_steps}; checkpoint "
                         f"saved, continue with: {PROG} resume={shlex.quote(str(run_dir))}", 128 + stop.signum)
    return last


def _updates(cfg: DictConfig, run_dir: Path, agent: Agent, replay: Replay, p: Progress, tracker: MeanTracker,
             steps: int) -> None:
    """The updates owed under the train ratio. Raises RunStopped after `trainer.max_nonfinite` skipped
    updates in a row, before a checkpoint could store a diverged state."""
    made = 0
    while p.updates_due >= 1.0 and len(replay) >= cfg.replay.batch_length:
        tracker.add(agent.update(replay.sample(cfg.replay.batch_size, cfg.replay.batch_length)))
        p.updates, p.updates_due, made = p.updates + 1, p.updates_due - 1.0, made + 1
    # Read once after the updates of this env step (a host sync), not inside them.
    if made and (in_a_row := int(agent.skipped_in_a_row)) >= cfg.trainer.max_nonfinite:
        raise RunStopped(f"{in_a_row} updates in a row had a non-finite loss or gradient at env step {steps}; "
                         f"stopped, the last checkpoint in {run_dir} is kept", 1)


def _next_actions(agent: Agent, transitions: dict[str, np.ndarray], state: RSSMState | None, spec: EnvSpec,
                  rng: np.random.Generator, prefill: bool) -> tuple[np.ndarray, RSSMState | None]:
    """The next actions (N, A) and the actor's model state. Without an actor, or during the prefill, the actions
    are uniformly random; the actor still sees every transition, so that its state is current when it takes over."""
    actions = None
    if agent.actor is not None:
        actions, state = agent.act(transitions, state, explore=True)
    if agent.actor is None or prefill:
        actions = random_action(spec, rng, len(transitions["is_first"]))
    return actions, state


def crossed(before: int, now: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, now]: the env step counter moves by up to N per step."""
    return every > 0 and now // every > before // every


def open_loop_metrics(cfg: DictConfig, agent: Agent, replay: Replay, steps: int,
                      sequences: int = 4) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Open-loop prediction errors (`rssm.openloop`) on a fresh replay batch and, for each image key, a video of
    the first `sequences` sequences (`openloop/video_KEY`) drawn from the same prediction; both empty while the
    replay is shorter than one sequence. The batch and the sampled latents use their own random numbers, so
    training is the same whether and how often this runs. A horizon at which every sequence had reached an
    episode start is left out of the errors."""
    t, wm = cfg.trainer, agent.wm
    H = max(t.openloop_horizons)
    if len(replay) < t.openloop_context + H:
        return {}, {}
    rng = np.random.default_rng([cfg.seed, steps])
    batch = to_torch(replay.sample(cfg.replay.batch_size, t.openloop_context + H, rng), agent.device)
    with torch.random.fork_rng(devices=[agent.device] if agent.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed + steps)
        prediction = predict_open_loop(wm, batch, t.openloop_context, H, reconstruct=bool(wm.image_keys))
    errors = open_loop_errors(wm, batch, t.openloop_context, t.openloop_horizons, prediction)
    videos = {f"openloop/video_{k}": open_loop_video(wm, batch, t.openloop_context, H, sequences, k, prediction)
              for k in wm.image_keys}
    return {k: v.item() for k, v in errors.items() if math.isfinite(v.item())}, videos


def _loop(cfg: DictConfig, run_dir: Path, agent: Agent, replay: Replay, collector: Collector, progress: Progress,
          rng: np.random.Generator, stop: StopRequested) -> dict[str, float]:
    """Collect and update until `trainer.steps` env steps or a stop signal; checkpoint on the way."""
    t, spec, p = cfg.trainer, collector.spec, progress
    replayed_per_update = cfg.replay.batch_size * cfg.replay.batch_length
    logger = Logger(run_dir, t.steps, t.progress, start=collector.env_steps)
    tracker, last, warn_at = p.tracker, {}, collector.failures + 1
    clock, clock_steps, clock_updates = time.perf_counter(), collector.env_steps, p.updates
    if p.actions is None or len(p.actions) != collector.num:  # a new run, or a checkpoint without them
        p.actions, p.actor_state = random_action(spec, rng, collector.num), None
    try:
        if p.eval_pending and _pending_eval(cfg, agent, p, stop, logger, last, collector.env_steps):
            return last  # the evaluation a signal abandoned, redone at its step
        while collector.env_steps < t.steps and not stop.signum:
            before = collector.env_steps
            transitions, episodes = collector.step(p.actions)
            replay.add(transitions)
            if collector.failures >= warn_at:  # at failures 1, 2, 4, 8, ...: a flaky env cannot flood the terminal
                print(f"rssm: warning: {collector.last_error}; env restarted, episodes dropped (failure "
                      f"{collector.failures}; the next warning at failure {2 * collector.failures})", file=sys.stderr)
                warn_at = 2 * collector.failures
            p.actions, p.actor_state = _next_actions(agent, transitions, p.actor_state, spec, rng,
                                                     collector.env_steps < t.prefill)
            for episode in episodes:
                tracker.add({"episode/return": episode["return"], "episode/length": episode["length"]})
                p.last_return = episode["return"]
            steps = collector.env_steps
            if steps == before:
                continue  # only resets, which are not env steps
            p.updates_due += max(0, steps - max(before, t.prefill)) * t.train_ratio / replayed_per_update
            _updates(cfg, run_dir, agent, replay, p, tracker, steps)
            if crossed(before, steps, t.openloop_every):
                scalars, videos = open_loop_metrics(cfg, agent, replay, steps)
                logger.scalars(scalars, steps)
                logger.videos(videos, steps)
            eval_due = agent.actor is not None and (crossed(before, steps, t.eval_every) or steps >= t.steps)
            if crossed(before, steps, t.log_every) or steps >= t.steps or eval_due:
                elapsed = time.perf_counter() - clock
                last = tracker.means()
                last.update({"perf/env_steps_per_s": (steps - clock_steps) / elapsed,
                             "perf/updates_per_s": (p.updates - clock_updates) / elapsed,
                             "perf/updates": float(p.updates), "train/skipped_updates": float(agent.skipped),
                             "train/env_failures": float(collector.failures)})
                logger.scalars(last, steps)
                p.eval_pending = eval_due
                if eval_due and _pending_eval(cfg, agent, p, stop, logger, last, steps):
                    break
                clock, clock_steps, clock_updates = time.perf_counter(), steps, p.updates
            if crossed(before, steps, t.checkpoint_every) and steps < t.steps:
                save_run(run_dir / CHECKPOINT, cfg, agent, replay, collector, p, rng)
            logger.progress(steps, updates_per_s=f"{last.get('perf/updates_per_s', 0.0):.1f}",
                            ret=f"{p.last_return:.1f}")
    finally:
        logger.close()
    return last


def _pending_eval(cfg: DictConfig, agent: Agent, p: Progress, stop: StopRequested, logger: Logger,
                  last: dict[str, float], steps: int) -> bool:
    """Run the evaluation due at `steps` and log it (into `last` too). Returns whether the run should end: a
    signal abandoned it (`p.eval_pending` stays set, so the checkpoint's resumed run redoes it), or its mean
    return reached `trainer.stop_return`."""
    metrics = evaluate(agent, cfg, cfg.trainer.eval_episodes, steps, stop)
    if metrics is None:
        return True
    p.eval_pending = False
    last.update(metrics)
    logger.scalars(metrics, steps)
    stop_return = cfg.trainer.stop_return
    if stop_return is not None and metrics["eval/return_mean"] >= stop_return:
        print(f"rssm: mean eval return {metrics['eval/return_mean']:.1f} >= trainer.stop_return at env step "
              f"{steps}; stopping", flush=True)
        return True
    return False


def objective(cfg: DictConfig, last: dict[str, float]) -> float:
    """What a run returns to hydra's sweepers: the final mean eval return of the mode policy, or for a world
    model alone its final loss (NaN when the run logged none)."""
    key = "eval/return_mean" if cfg.agent.kind == "dreamer" else "loss/wm"
    return float(last.get(key, float("nan")))


def run(cfg: DictConfig, held: HeldStderr) -> float:
    """The task of `rssm-train`: a new run in hydra's output directory, or with `resume=` the run's own
    config plus what the command line changes, continued in the run's directory."""
    held.release()
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    try:
        run_dir = Path(hydra_cfg.runtime.output_dir)
        if cfg.resume:
            cfg, overrides, changes = resumed_config(cfg, overrides, lambda o: compose("config", overrides=o))
            run_dir = checkpoint_path(cfg.resume).parent
            if changes:
                print(f"rssm: resuming with changes: {'; '.join(changes)}", flush=True)
        else:
            overrides = merge_overrides([], overrides)
        last = train(cfg, run_dir, overrides)
    except UserError as e:
        fail(str(e))
    except RunStopped as e:
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        if e.status == 1 and hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")  # a diverged trial of a sweep: the sweeper goes on with the next
        sys.exit(e.status)
    return objective(cfg, last)


def main() -> None:
    """`rssm-train [overrides]`: hydra composes the config from configs/ and the command line."""
    register_configs()
    register_resolvers()
    sys.argv = [sys.argv[0], *with_general_env(sys.argv[1:])]
    with HeldStderr() as held:
        hydra.main(config_path="pkg://rssm.configs", config_name="config", version_base=None)(
            lambda cfg: run(cfg, held))()


if __name__ == "__main__":
    main()
