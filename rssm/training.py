"""The training loop: `train(cfg, run_dir)` runs one run, new or resumed, from a composed config.

`rssm.build` turns the config into objects. Three callers: the hydra app `rssm-train` (`rssm.app`), `rssm.train`
from Python (`rssm.launch`), and each rank of a torchrun job.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from rssm import context
from rssm.agent import Agent, NonFiniteModel, to_torch
from rssm.build import build_agent, build_envs, resolve_device
from rssm.checkpoint import (
    CHECKPOINT,
    checkpoint_path,
    load_checkpoint,
    rank_parts,
    restore_run,
    save_model,
    save_run,
    seeded,
)
from rssm.cli import PROG, made_dir, resume_override, write_run_config
from rssm.collector import Collector, EnvFailing
from rssm.config import FREE_KEYS, UserError, check_changes, config_changes, validate
from rssm.distributed import SINGLE, Ranks
from rssm.envs import EnvSpec, random_action
from rssm.evaluate import VIDEO_FPS, EvalVideos, evaluate_policy
from rssm.files import WriteFailed, lock_run_dir, remove_leftovers, remove_made
from rssm.host import setup_host
from rssm.loggers import check_remote_loggers
from rssm.logging import Logger, MeanTracker, overview
from rssm.messages import say, status
from rssm.offline import offline_source, train_offline
from rssm.openloop import label_video, open_loop_errors, open_loop_video, predict_open_loop
from rssm.replay import Replay
from rssm.report import announce, check_replay_memory, summary
from rssm.rssm import RSSMState
from rssm.run_state import ForcedStop, Progress, RunStopped, StopRequested, crossed, seed_everything


def rank_seed(seed: int, ranks: Ranks) -> int:
    """The seed of this rank's envs, replay sampling and random streams: `seed` itself on rank 0 (so a job of one
    rank is the single-process run), one drawn from (seed, rank) on the others."""
    return seed if ranks.main else int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1)[0] >> 1)


def replay_dir(run_dir: Path, ranks: Ranks) -> Path:
    """Where this rank's replay writes its chunks: `replay/`, or its own shard `replay/rank_K/` in a job of
    several ranks."""
    return run_dir / "replay" if ranks.world == 1 else run_dir / "replay" / f"rank_{ranks.rank}"


def resume_checkpoint(cfg: DictConfig, ranks: Ranks) -> tuple[Path, dict]:
    """Load the checkpoint `cfg.resume` names and check that `cfg` matches the run's config, and the job's ranks
    the run's."""
    path = checkpoint_path(cfg.resume)
    state = load_checkpoint(path)
    missing = {"config", "agent"} - state.keys()
    if missing:
        raise UserError(f"cannot load checkpoint {path}: it lacks {', '.join(sorted(missing))}")
    rank_parts(path, state, ranks.world)
    if not state["config"].get("replay", {}).get("save", True):
        raise UserError(f"cannot resume {path}: its run had replay.save=false, so its replay was not saved (its "
                        f"weights are in {path.parent / 'model.pt'} once it stopped or ended)")
    if not cfg.replay.save:
        raise UserError(f"replay.save=false cannot be given to resume {path}: the run's replay is saved and stays so")
    check_changes(state["config"], cfg, path)
    return path, state


def train(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None,
          ranks: Ranks = SINGLE) -> dict[str, float]:
    """Train the agent the config describes. Writes TensorBoard events, `checkpoint.pt`, `replay/` (unless
    `replay.save` is false), `model.pt`, `config.yaml` and the command line's `overrides` (`overrides.yaml`, read
    when the run is resumed from the command line) to `run_dir` (with `cfg.resume`: to the resumed run's
    directory), holding an exclusive lock on it for the run's life. Returns the last logged metrics. A run that
    finishes ends with a summary on the terminal (where its files are, how to watch its policy); a resumed run
    that had already finished says so, with how to train it longer, and trains nothing (returns no metrics).

    In a data-parallel job (`ranks`, every rank calls this together) rank 0 owns `run_dir`: it holds the lock,
    writes the events, `checkpoint.pt` and `model.pt`, and evaluates; each rank writes its replay shard under
    `replay/rank_K/`.

    Raises:
        UserError: bad config, unusable or busy run directory, a file that cannot be written (full disk).
        RunStopped: after a signal (checkpoint saved, status 128 + signum); envs that keep failing (checkpoint
            saved, status 1); a diverged model: too many non-finite updates in a row, or a non-finite state when
            acting (last checkpoint kept, status 1).
    """
    made = None if cfg.resume else made_dir(Path(run_dir))
    try:
        return _start(cfg, run_dir, overrides, ranks)
    except UserError:  # refused: the file system as it was found (a run that wrote files keeps them)
        if made is not None and ranks.main:
            remove_made(Path(run_dir), made)
        raise


def _start(cfg: DictConfig, run_dir: Path, overrides: list[str] | None, ranks: Ranks) -> dict[str, float]:
    validate(cfg)
    check_remote_loggers(cfg)
    run_dir = checkpoint_path(cfg.resume).parent if cfg.resume else Path(run_dir)
    lock, problem = None, None
    try:
        if ranks.main:
            try:
                lock = lock_run_dir(run_dir)
                if not cfg.resume and (run_dir / CHECKPOINT).exists():
                    raise UserError(f"{run_dir} already holds a run: continue it with {PROG} "
                                    f"{resume_override(run_dir)} or pick another dir")
                if not cfg.resume and (run_dir / "model.pt").exists():
                    raise UserError(f"{run_dir} already holds a run's model.pt (without its checkpoint.pt, so the run "
                                    f"cannot be continued): pick another dir")
                remove_leftovers(run_dir)  # of a writer killed mid-write; none can be writing: we hold the lock
            except UserError as e:
                problem = str(e)
        if problem := ranks.share(problem):
            raise UserError(problem)
        if offline_source(cfg):
            if ranks.world > 1:
                raise UserError("offline training (offline.minari, offline.replay) runs in one process, not torchrun")
            return train_offline(cfg, run_dir, overrides)
        resumed = resume_checkpoint(cfg, ranks) if cfg.resume else None
        if resumed and _finished(cfg, run_dir, *resumed, ranks):
            return {}
        return _train(cfg, run_dir, resumed, overrides, ranks)
    except KeyboardInterrupt:  # Ctrl-C while the run was being set up, before its handler was installed
        raise RunStopped(f"stopped by SIGINT while the run in {run_dir} was starting; no checkpoint was written",
                         128 + signal.SIGINT) from None
    finally:
        if lock is not None:
            lock.close()


def _train(cfg: DictConfig, run_dir: Path, resumed: tuple[Path, dict] | None,
           overrides: list[str] | None, ranks: Ranks) -> dict[str, float]:
    started = time.perf_counter()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    setup_host(cfg.threads)
    device = _device(cfg, ranks)
    seed = rank_seed(cfg.seed, ranks)

    def remake_envs():
        return build_envs(cfg)[0]

    envs, spec = build_envs(cfg)
    agent = build_agent(cfg, spec, device, ranks)
    check_replay_memory(spec, agent.wm, cfg.replay.capacity, cfg.replay.context,
                        agent.device if cfg.replay.on_device else None)
    seed_everything(seed)
    replay = Replay(cfg.replay.capacity, seed, replay_dir(run_dir, ranks) if cfg.replay.save else None,
                    cfg.replay.chunk, envs.num_envs, agent.device if cfg.replay.on_device else None,
                    online=cfg.replay.batch_length + cfg.replay.context if cfg.replay.online else 0)
    collector = Collector(envs, spec, seed, remake=remake_envs, step_timeout=cfg.env.step_timeout)
    rng = np.random.default_rng(seed)
    changes = config_changes(resumed[1]["config"], cfg, everything=True) if resumed else []
    progress = Progress.from_state_dict(restore_run(*resumed, agent, replay, collector, rng, ranks), device,
                                        collector.env_steps) if resumed else Progress()
    if ranks.main:  # the run is whole: a refused resume has written nothing, these lines included
        write_run_config(run_dir, cfg, overrides)
        announce(cfg, run_dir, agent, replay, spec, ranks, resumed and (resumed[0], changes, progress))

    def save() -> None:
        save_run(run_dir / CHECKPOINT, cfg, agent, replay, collector, progress, rng, ranks)

    with StopRequested(shared=ranks.world > 1) as stop:  # until the end: a signal during the save must not interrupt it
        try:
            last = _loop(cfg, run_dir, agent, replay, collector, progress, rng, stop, ranks)
            save()
            if ranks.main and (not stop.agreed or not cfg.replay.save):  # without a saved replay, the weights are
                save_model(agent, run_dir / "model.pt")  # all there is
        except EnvFailing as e:  # the run's state is whole: keep it
            save()
            raise RunStopped(f"{e}; checkpoint saved at env step {progress.env_steps}, continue with: "
                             f"{_again(run_dir, ranks)} once the env is fixed", 1) from None
        except WriteFailed as e:  # a full disk: stop at once, with a new checkpoint if it still fits
            raise WriteFailed(e.path, f"{e.reason}; {_save_after(e, save, run_dir, progress, ranks)}") from None
        except ForcedStop as e:  # the envs did not return: the state is as it was before their step
            collector.close(force=True)  # and the close below does nothing
            save()
            raise RunStopped(f"stopped by a second {signal.Signals(e.signum).name} at env step {progress.env_steps} "
                             f"while waiting on the env; checkpoint saved, continue with: {_again(run_dir, ranks)}",
                             128 + e.signum) from None
        except NonFiniteModel as e:
            raise RunStopped(f"{e} at env step {progress.env_steps}; stopped, the last checkpoint in {run_dir} is "
                             f"kept", 1) from None
        finally:
            collector.close()
    if stop.agreed and not cfg.replay.save:
        raise RunStopped(f"stopped by {signal.Signals(stop.agreed).name} at env step {progress.env_steps}; "
                         f"weights saved to {run_dir / 'model.pt'} (replay.save=false: the run cannot be resumed)",
                         128 + stop.agreed)
    if stop.agreed:
        raise RunStopped(f"stopped by {signal.Signals(stop.agreed).name} at env step {progress.env_steps}; "
                         f"checkpoint saved, continue with: {_again(run_dir, ranks)}", 128 + stop.agreed)
    if ranks.main:
        summary(cfg, run_dir, progress, last, time.perf_counter() - started, resumed is not None)
    return last


def _finished(cfg: DictConfig, run_dir: Path, path: Path, state: dict, ranks: Ranks) -> bool:
    """Whether the checkpoint `state` (read from `path`) is of a run that has taken its `trainer.steps` env steps
    (and its last evaluation): resuming it would train nothing, so it says so in one line, with how to train it
    longer."""
    part = state.get("ranks", [state])[0]
    saved = part["progress"]
    steps = int(saved.get("env_steps", part["collector"]["env_steps"]))
    changed = [c.split(":", 1)[0] for c in config_changes(state["config"], cfg, everything=True)]
    if any(not k.startswith(FREE_KEYS) for k in changed):
        return False  # an allowed change is checked against the run's data by restoring it, as any resume's
    if steps < cfg.trainer.steps or saved.get("eval_pending", False):
        return False
    if ranks.main:
        longer = 2 * max(steps, cfg.trainer.steps)
        status(f"rssm: resumed from {path} at env step {steps}: the run is finished (trainer.steps="
               f"{cfg.trainer.steps}), nothing to train; train it longer with: {_again(run_dir, ranks)} "
               f"trainer.steps={longer} {shlex.quote('allow_changes=[trainer.steps]')}")
    return True


def _save_after(failed: WriteFailed, save, run_dir: Path, p: Progress, ranks: Ranks) -> str:
    """After a file of the run could not be written, `save()` the checkpoint if there is still room for it (in a
    single process: the ranks of a job are not at the same point); says which checkpoint the run keeps."""
    if ranks.world == 1 and failed.path != run_dir / CHECKPOINT:
        try:
            save()
            return (f"checkpoint saved at env step {p.env_steps}, continue with: {_again(run_dir, ranks)} once "
                    f"there is room")
        except WriteFailed:
            pass  # atomic: the previous checkpoint is whole
    if (run_dir / CHECKPOINT).exists():
        return f"stopped, the last checkpoint in {run_dir} is kept"
    return "stopped before the first checkpoint"


def _device(cfg: DictConfig, ranks: Ranks) -> torch.device:
    """The config's device; in a job of several ranks on a machine with GPUs, this rank's own GPU, made the current
    one (so that NCCL's own buffers go to it, not to GPU 0)."""
    device = ranks.device(resolve_device(cfg.device))
    if device.type == "cuda" and ranks.world > 1:
        torch.cuda.set_device(device)
    return device


def _updates(cfg: DictConfig, run_dir: Path, agent: Agent, replay: Replay, p: Progress, tracker: MeanTracker,
             steps: int) -> None:
    """The updates owed under the train ratio, each on a batch of `Replay.train_batch`; with a replay context,
    from the stored states, which each update then writes back (`rssm.context`). Raises RunStopped after
    `trainer.max_nonfinite` skipped updates in a row, before a checkpoint could store a diverged state."""
    made, r = 0, cfg.replay
    while p.updates_due >= 1.0 and len(replay) >= r.batch_length + r.context:
        batch, where = replay.train_batch(r.batch_size, r.batch_length + r.context)
        if r.context:
            batch, start = context.split(batch, r.context)
            tracker.add(agent.update(batch, context.start_state(start, cfg.model.classes, agent.device)))
            replay.write(where, context.stored(agent.posterior))  # a host sync: the states go to the replay
        else:
            tracker.add(agent.update(batch))
        p.updates, p.updates_due, made = p.updates + 1, p.updates_due - 1.0, made + 1
    # Read once after the updates of this env step (a host sync), not inside them.
    if made and (in_a_row := int(agent.skipped_in_a_row)) >= cfg.trainer.max_nonfinite:
        raise RunStopped(f"{in_a_row} updates in a row had a non-finite loss or gradient at env step {steps}; "
                         f"stopped, the last checkpoint in {run_dir} is kept", 1)


def _owed(cfg: DictConfig, replay: Replay, before: int, steps: int) -> int:
    """The env steps in (before, steps] that owe updates under the train ratio: those after `trainer.prefill`; with
    no prefill, those taken once the replay holds one batch of sequences (DreamerV3's start: updates begin then,
    and none are owed for the steps before)."""
    t, r = cfg.trainer, cfg.replay
    if t.prefill > 0:
        return max(0, steps - max(before, t.prefill))
    return steps - before if replay.windows(r.batch_length + r.context) >= r.batch_size * r.batch_length else 0


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
    with seeded(cfg.seed + steps, agent.device):
        prediction = predict_open_loop(wm, batch, t.openloop_context, H, reconstruct=bool(wm.image_keys))
    errors = open_loop_errors(wm, batch, t.openloop_context, t.openloop_horizons, prediction)
    videos = {f"openloop/video_{k}": label_video(open_loop_video(wm, batch, t.openloop_context, H, sequences, k,
                                                                 prediction), t.openloop_context)
              for k in wm.image_keys}
    return {k: v.item() for k, v in errors.items() if math.isfinite(v.item())}, videos


def _loop(cfg: DictConfig, run_dir: Path, agent: Agent, replay: Replay, collector: Collector, progress: Progress,
          rng: np.random.Generator, stop: StopRequested, ranks: Ranks) -> dict[str, float]:
    """Collect and update until `trainer.steps` env steps (of all ranks) or a stop signal; checkpoint on the way.
    Every rank runs this loop in step with the others: they agree on the env steps after each step of their envs,
    so that they update, log, evaluate and checkpoint at the same steps."""
    t, spec, p = cfg.trainer, collector.spec, progress
    replayed_per_update = cfg.replay.batch_size * cfg.replay.batch_length * ranks.world
    tracker, last, warn_at = p.tracker, {}, collector.failures + 1
    clock = time.perf_counter(), p.env_steps, p.updates  # when the last log was written, at what step and update
    if p.actions is None or len(p.actions) != collector.num:  # a new run, or a checkpoint without them
        p.actions, p.actor_state = random_action(spec, rng, collector.num), None
    eval_videos = EvalVideos(cfg, agent.wm.image_keys) if ranks.main else None
    layout = overview(evaluates=agent.actor is not None)
    with Logger(cfg, run_dir, t.progress, start=p.env_steps, layout=layout) if ranks.main else nullcontext() as logger:
        if p.eval_pending and _pending_eval(cfg, agent, p, stop, logger, last, p.env_steps, ranks, eval_videos):
            return last  # the evaluation a signal abandoned, redone at its step
        while p.env_steps < t.steps and not stop.agreed:
            before = p.env_steps
            transitions, episodes = _collect(collector, p, stop, ranks)
            warn_at = _warn_failures(collector, warn_at, ranks)
            p.actions, p.actor_state = _next_actions(agent, transitions, p.actor_state, spec, rng,
                                                     p.env_steps < t.prefill)
            # With a replay context, each transition is stored with the state acting reached by it.
            replay.add({**transitions, **context.stored(p.actor_state)} if cfg.replay.context else transitions)
            for episode in episodes:
                tracker.add({"episode/return": episode["return"], "episode/length": episode["length"]})
                p.last_return = episode["return"]
            steps = p.env_steps
            if steps == before:
                continue  # only resets, which are not env steps
            p.updates_due += _owed(cfg, replay, before, steps) * t.train_ratio / replayed_per_update
            _updates(cfg, run_dir, agent, replay, p, tracker, steps)
            if ranks.main and crossed(before, steps, t.openloop_every):
                scalars, videos = open_loop_metrics(cfg, agent, replay, steps)
                logger.scalars(scalars, steps)
                logger.videos(videos, steps)
            eval_due = agent.actor is not None and (crossed(before, steps, t.eval_every) or steps >= t.steps)
            if crossed(before, steps, t.log_every) or steps >= t.steps or eval_due:
                p.eval_pending = eval_due  # set first: a run stopped by a failed write redoes the evaluation
                last = _log(logger, agent, collector, p, ranks, clock)
                if eval_due and _pending_eval(cfg, agent, p, stop, logger, last, steps, ranks, eval_videos):
                    break
                clock = time.perf_counter(), steps, p.updates
            if crossed(before, steps, t.checkpoint_every) and steps < t.steps:
                save_run(run_dir / CHECKPOINT, cfg, agent, replay, collector, p, rng, ranks)
            if logger:
                logger.progress(steps, p.updates, p.last_return)
        if logger:  # the bar as the run ends: its last evaluation included (the loop leaves right after it)
            logger.progress(p.env_steps, p.updates, p.last_return, last=True)
    return last


def _log(logger: Logger | None, agent: Agent, collector: Collector, p: Progress, ranks: Ranks,
         clock: tuple[float, int, int]) -> dict[str, float]:
    """The means of the metrics since the last log (`clock`: its time, env step and update), over every rank,
    with the speed of training; written by rank 0."""
    _, then_steps, then_updates = clock
    elapsed = time.perf_counter() - clock[0]
    metrics, failures = _means(p.tracker, collector, ranks)
    metrics.update({"perf/env_steps_per_s": (p.env_steps - then_steps) / elapsed,
                    "perf/updates_per_s": (p.updates - then_updates) / elapsed,
                    "perf/updates": float(p.updates), "train/skipped_updates": float(agent.skipped),
                    "train/env_failures": float(failures)})
    if logger:
        logger.scalars(metrics, p.env_steps)
    return metrics


def _warn_failures(collector: Collector, warn_at: int, ranks: Ranks) -> int:
    """Warn of env failures at failures 1, 2, 4, 8, ... (a flaky env cannot flood the terminal); returns the
    failure count of the next warning."""
    if collector.failures < warn_at:
        return warn_at
    say(f"rssm: warning: {rank_prefix(ranks)}{collector.last_error}; env restarted, episodes dropped (failure "
        f"{collector.failures}; the next warning at failure {2 * collector.failures})")
    return 2 * collector.failures


def _again(run_dir: Path, ranks: Ranks) -> str:
    """The command that continues the run in `run_dir`."""
    launch = f"torchrun with {ranks.world} ranks: " if ranks.world > 1 else ""
    return f"{launch}{PROG} {resume_override(run_dir)}"


def rank_prefix(ranks: Ranks) -> str:
    """'rank K: ' before what one rank of several reports; nothing in a single process."""
    return f"rank {ranks.rank}: " if ranks.world > 1 else ""


def _collect(collector: Collector, p: Progress, stop: StopRequested,
             ranks: Ranks) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    """One step of this rank's envs; `p.env_steps` then counts the env steps of every rank. The ranks agree on
    it, and on a stop: a signal that reached any rank stops them all (`stop.agreed`), as does an env failing on
    any rank (EnvFailing on every rank)."""
    before = collector.env_steps
    try:
        with stop.waiting():
            transitions, episodes, failure = *collector.step(p.actions), None
    except EnvFailing as e:
        if ranks.world == 1:
            raise
        transitions, episodes, failure = {}, [], f"rank {ranks.rank}: {e}"
    steps, sigint, sigterm, failing = ranks.sum([collector.env_steps - before, stop.signum == signal.SIGINT,
                                                 stop.signum == signal.SIGTERM, failure is not None])
    p.env_steps += steps
    if failing:
        raise EnvFailing("; ".join(f for f in ranks.gather(failure) if f))
    if sigint or sigterm:
        stop.agreed = signal.SIGINT if sigint else signal.SIGTERM
    return transitions, episodes


def _means(tracker: MeanTracker, collector: Collector, ranks: Ranks) -> tuple[dict[str, float], int]:
    """The tracked metrics' means since the last log over every rank's values (each rank's episodes, its own
    losses), and the env failures of all ranks."""
    if ranks.world == 1:
        return tracker.means(), collector.failures
    parts = ranks.gather((tracker.totals(), collector.failures))
    return MeanTracker.merge([totals for totals, _ in parts]), sum(failures for _, failures in parts)


def _pending_eval(cfg: DictConfig, agent: Agent, p: Progress, stop: StopRequested, logger: Logger | None,
                  last: dict[str, float], steps: int, ranks: Ranks, videos: EvalVideos | None) -> bool:
    """Run the evaluation due at `steps` (rank 0; the others wait for its outcome) and log it (into `last` too),
    with its first episode as a video (`eval/video`) where `videos` says so. Returns whether the run should end: a
    signal abandoned it (`p.eval_pending` stays set, so the checkpoint's resumed run redoes it), or its mean return
    reached `trainer.stop_return`."""
    record = videos.recording(steps) if videos else None
    metrics = evaluate_policy(agent, cfg, cfg.trainer.eval_episodes, steps, stop, record) if ranks.main else None
    abandoned, reached = ranks.share((metrics is None, _reached(cfg, metrics, steps) if metrics else False))
    if abandoned:  # a signal reached rank 0 in the evaluation: every rank stops with it
        stop.agreed = stop.signum or signal.SIGTERM
        return True
    p.eval_pending = False
    if metrics:
        last.update(metrics)
        logger.scalars(metrics, steps)
        if record is not None and (video := videos.video(record)) is not None:
            logger.videos({"eval/video": video}, steps, fps=VIDEO_FPS)
    return reached


def _reached(cfg: DictConfig, metrics: dict[str, float], steps: int) -> bool:
    """Whether the mean eval return reached `trainer.stop_return` (said in one line)."""
    stop_return = cfg.trainer.stop_return
    if stop_return is not None and metrics["eval/return_mean"] >= stop_return:
        status(f"rssm: mean eval return {metrics['eval/return_mean']:.1f} >= trainer.stop_return at env step "
               f"{steps}; stopping")
        return True
    return False


def objective(cfg: DictConfig, last: dict[str, float]) -> float:
    """What a run returns to hydra's sweepers: the final mean eval return of the mode policy, or for a world
    model alone its final loss (NaN when the run logged none)."""
    key = "eval/return_mean" if cfg.agent.kind == "dreamer" else "loss/wm"
    return float(last.get(key, float("nan")))
