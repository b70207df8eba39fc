"""What a training run tells the person running it: its first lines (what it trains, its sizes, where its
observations go, the replay's memory when full), the check that the replay fits in memory, and the summary a
finished run ends with."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch
from omegaconf import DictConfig

from rssm.agent import Agent
from rssm.build import env_id, gigabytes
from rssm.collector import blank_transition
from rssm.config import UserError
from rssm.distributed import Ranks
from rssm.envs import EnvSpec
from rssm.messages import status
from rssm.replay import Replay
from rssm.run_state import Progress
from rssm.world_model import WorldModel


def announce(cfg: DictConfig, run_dir: Path, agent: Agent, replay: Replay, spec: EnvSpec, ranks: Ranks,
             resumed: tuple[Path, list[str], Progress] | None) -> None:
    """The run's first lines: what it trains, its sizes and, for a resumed run, what changed and where it goes on."""
    if resumed and resumed[1]:
        status(f"rssm: resuming with changes: {'; '.join(resumed[1])}")
    counts = {"world model": agent.wm, "actor": agent.actor, "critic": agent.critic}
    sizes = ", ".join(f"{k} {sum(p.numel() for p in v.parameters()):,}" for k, v in counts.items() if v)
    job = f" x {ranks.world} ranks" if ranks.world > 1 else ""
    compiled = ", compiled (the first update and actions wait for the compiler)" if agent.compiled else ""
    status(f"rssm: {env_id(cfg)} on {agent.device}{job}{compiled}, agent={cfg.agent.kind}; parameters: {sizes}; run "
           f"dir {run_dir}")
    status(f"rssm: {replay_line(spec, agent.wm, replay.capacity * replay.envs, cfg.replay.context)}")
    if resumed:
        status(f"rssm: resumed from {resumed[0]} at env step {resumed[2].env_steps}, update {resumed[2].updates}")


def transition_bytes(spec: EnvSpec, wm: WorldModel, context: int = 0) -> int:
    """The replay's bytes per transition: its fields and, with a replay `context`, the stored model state."""
    per = sum(v.nbytes for v in blank_transition(spec).values())
    if context:
        per += 4 * wm.rssm.deter + 2 * wm.rssm.groups  # `rssm.context.stored`: h float32, z's indices int16
    return per


def check_replay_memory(spec: EnvSpec, wm: WorldModel, capacity: int, context: int, device: torch.device | None):
    """Raise UserError, before anything is written, if the full replay cannot fit in the machine's memory (with
    `device`, the GPU's): numpy would allocate it at the first transition, once the run's files are written."""
    total = capacity * transition_bytes(spec, wm, context)
    if device is not None and device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"{device}'s"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
    if total > have:
        raise UserError(f"replay.capacity={capacity:,} needs {gigabytes(total)} of memory for the replay "
                        f"({capacity:,} transitions x {transition_bytes(spec, wm, context):,} bytes), more than "
                        f"{where} {gigabytes(have)}")


def replay_line(spec: EnvSpec, wm: WorldModel, capacity: int, context: int = 0) -> str:
    """Each observation key with where it goes, and the replay's memory when full (capacity x bytes per
    transition, with a replay `context` the stored model state too)."""
    example = blank_transition(spec)
    per = transition_bytes(spec, wm, context)
    where = {**dict.fromkeys(wm.image_keys, "CNN"), **dict.fromkeys(wm.vector_keys, "MLP")}
    keys = ", ".join(f"{k} {'x'.join(map(str, s))} {example[k].dtype} -> {where.get(k, 'not modelled')}"
                     for k, s in spec.obs_shapes.items())
    total = capacity * per
    size = f"{total / 1e9:.2f} GB" if total >= 1e9 else f"{total / 1e6:.1f} MB"
    return f"observations: {keys}; replay: {capacity:,} transitions x {per:,} bytes = {size} when full"


def summary(cfg: DictConfig, run_dir: Path, p: Progress, last: dict[str, float], seconds: float,
             resumed: bool) -> None:
    """The lines a finished run ends with: what it did, its final result, where its files are and how to watch
    its policy."""
    if "eval/return_mean" in last:
        result = (f"; final eval return {last['eval/return_mean']:.1f} +- {last['eval/return_std']:.1f} "
                  f"({cfg.trainer.eval_episodes} episodes, {cfg.trainer.eval_policy} policy)")
    else:
        result = f"; final world-model loss {last['loss/wm']:.4g}" if "loss/wm" in last else ""
    session = " this session" if resumed else ""
    status(f"rssm: finished: {p.env_steps:,} env steps, {p.updates:,} updates in {duration(seconds)}{session}"
           f"{result}")
    lg, where = cfg.logger, shlex.quote(str(run_dir))
    logs = [name for name, kept in [("train.log", (run_dir / "train.log").exists()),
                                    (f"TensorBoard events (tensorboard --logdir {where})", lg.tensorboard),
                                    ("metrics.csv", lg.csv), ("metrics.jsonl", lg.jsonl), ("wandb/", lg.wandb.enabled),
                                    ("mlflow.db", lg.mlflow.enabled and not lg.mlflow.tracking_uri)] if kept]
    status(f"rssm: weights in {run_dir / 'model.pt'}; logs in {run_dir}: {', '.join(logs) or 'none'}")
    if cfg.agent.kind == "dreamer":
        status(f"rssm: watch the policy: rssm-eval {where} --video episode.gif")
    if lg.wandb.enabled and lg.wandb.mode == "offline":
        status(f"rssm: upload the W&B run: wandb sync {shlex.quote(str(run_dir / 'wandb'))}/offline-run-*")


def duration(seconds: float) -> str:
    """`seconds` as 42s, 3m 05s or 2h 07m."""
    minutes, hours = int(seconds) // 60, int(seconds) // 3600
    if hours:
        return f"{hours}h {minutes % 60:02d}m"
    return f"{minutes}m {int(seconds) % 60:02d}s" if minutes else f"{seconds:.0f}s"
