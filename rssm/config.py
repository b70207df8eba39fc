"""Typed config schema. Hydra merges the YAML files in configs/ into these dataclasses, so an unknown
key or a value of the wrong type fails while the config is composed, before anything is built."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class UserError(Exception):
    """A problem the user can fix (bad config value, unknown env id, ...): shown as one line, exit 2."""


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"  # any registered gymnasium id
    action_repeat: int = 1  # each action is taken this many times (rewards summed): one agent step
    time_limit: int = 0  # max agent steps per episode; 0 keeps the env's own limit
    pixels: bool = False  # observe the env's rendered frames (key `image`) instead of its own observation
    pixels_keep_state: bool = False  # with pixels: keep the env's own observation too (key `state`)
    image_size: int = 64  # with pixels or Atari: side of the square image
    grayscale: bool = False  # with pixels or Atari: one gray channel (size, size, 1) instead of RGB
    game: str = ""  # an Atari game (pong, ms_pacman): when set, the id is ALE/{Game}-v5 (Pong, MsPacman), not env.id
    sticky_actions: float = 0.0  # Atari: probability that the previous action repeats at each frame
    noop_max: int = 0  # Atari: at most this many no-op frames (random count) after each reset
    num_envs: int = 1  # envs collecting together (gymnasium.vector); each env step counts toward trainer.steps
    vector: str = "sync"  # sync: envs step in this process, one after another | async: one subprocess per env
    task: str = ""  # DeepMind Control task, domain_task, e.g. walker_walk; when set, the env is DMC's, not env.id
    camera: int = -1  # DeepMind Control: the camera of pixel frames; -1: DreamerV3's (2 for quadruped, else 0)
    step_timeout: float | None = None  # seconds a reset or step of the envs may take; longer is an env failure


@dataclass
class ModelConfig:
    deter: int = 256  # GRU state size
    units: int = 256  # hidden width of every MLP
    layers: int = 1  # hidden layers of encoder, decoder and heads (the size preset's depth)
    groups: int = 32  # stochastic state: G categoricals ...
    classes: int = 32  # ... of C classes each
    unimix: float = 0.01
    bins: int = 255  # two-hot bins of the reward head
    cnn_depth: int = 32  # the CNN's channels: its first stage's (strided: doubling each stage; pooled: x 2, 3, 4, 4)
    cnn_keys: str = ".*"  # regex: image keys (H x W x C uint8) whose whole name matches go to the CNN
    mlp_keys: str = ".*"  # regex: vector keys (1-D float) whose whole name matches go to the MLP
    # How the networks are built: set by `algo=` (configs/algo/), where DreamerV3 2023 and now differ.
    norm: str = "rms"  # rms: RMSNorm, biased layers (now) | layer: LayerNorm, bias-free layers (2023)
    fan: str = "in"  # initial weights' variance 1 / fan: in: fan-in (now) | avg: mean of fan-in and fan-out (2023)
    blocks: int = 8  # block-diagonal GRU over this many groups of h (now) | 0: one GRU over Linear(z, a) (2023)
    dyn_layers: int = 1  # with blocks: block-diagonal hidden layers before the GRU layer
    prior_layers: int = 2  # hidden layers of the prior (now: 2, 2023: 1)
    learned_initial: bool = False  # learned initial state (2023) | zeros at each episode start (now)
    head_layers: int | None = 1  # hidden layers of the reward and continue heads; null: as the encoder's (2023)
    twohot: str = "symexp"  # two-hot bins of reward and critic: symexp, in value space (now) | symlog (2023)
    cnn: str = "pooled"  # pooled: 5x5 convs with max-pooling, sigmoid decoder (now) | strided: 4x4 stride 2 (2023)
    # hidden layers of the encoder, decoder, actor and critic MLPs in place of `layers`: 3 at every size (now);
    # null: the size preset's `layers`
    mlp_layers: int | None = None
    # the posterior's first layer, Linear(concat(h, embed)), initialised as that one layer (fan-in D + E, now) |
    # false: as its two parts apart (fan-in D and E)
    post_joint_init: bool = False


@dataclass
class WorldModelConfig:
    rec_scale: float = 1.0  # weight of the reconstruction loss (loss/rec) in the world-model loss
    reward_scale: float = 1.0  # weight of the reward loss (loss/reward)
    cont_scale: float = 1.0  # weight of the continue loss (loss/cont)
    kl_dyn_scale: float = 1.0  # weight of the dynamics KL (loss/kl_dyn), which trains the prior
    kl_rep_scale: float = 0.1  # weight of the representation KL (loss/kl_rep), which trains the posterior
    free_bits: float = 1.0  # nats: each KL term is clipped below at this, so a small KL sends no gradient
    lr: float = 4e-5  # learning rate of the world model (encoder, RSSM, decoder, reward and continue heads)
    eps: float = 1e-20  # the optimizer's epsilon
    grad_clip: float = 0.0  # global gradient-norm clip; 0: none


@dataclass
class AgentConfig:
    kind: str = "dreamer"  # dreamer: actor-critic in imagination | world_model: random policy, no actor or critic
    horizon: int = 15  # imagination steps
    gamma: float = 1.0 - 1.0 / 333.0  # discount per agent step
    lam: float = 0.95  # lambda of the lambda-returns
    entropy: float = 3e-4  # actor entropy bonus
    slow_rate: float = 0.02  # EMA rate of the slow critic
    replay_value: float = 0.3  # weight of the critic's loss on replayed states toward real returns; 0: none
    replay_value_grad: bool = True  # that loss also trains the world model (now; needs optim.joint)
    cont_prob: bool = True  # imagined steps weighted by the continue probability, start included (now) | its mode
    contdisc: bool = True  # the continue head's target is gamma at non-terminal steps and discounts alone (now)
    actor_grad_discrete: str = "reinforce"  # reinforce | backprop
    actor_grad_continuous: str = "reinforce"  # reinforce (now) | backprop (2023)
    actor_unimix: float = 0.0  # uniform mix of a discrete policy (now: 0, upstream's categorical head; 2023: 0.01)
    actor_outscale: float = 0.01  # scale of the actor's initial output weights (now: 0.01, 2023: 1)
    actor_lr: float = 4e-5  # learning rate of the actor
    critic_lr: float = 4e-5  # learning rate of the critic
    eps: float = 1e-20  # the optimizer's epsilon, of actor and critic
    grad_clip: float = 0.0  # global gradient-norm clip of actor and of critic; 0: none


@dataclass
class OptimConfig:
    name: str = "laprop"  # laprop: LaProp with per-tensor clipping and warm-up (now) | adam (2023)
    joint: bool = True  # one forward pass and one step of every module (now) | world model first (2023)
    agc: float = 0.3  # laprop: a tensor's update norm at most agc * max(1e-3, its norm); 0: none
    warmup: int = 1000  # laprop: updates over which the learning rates rise linearly from 0
    beta1: float = 0.9  # decay rate of the momentum
    beta2: float = 0.999  # decay rate of the squared-gradient average


@dataclass
class ReplayConfig:
    capacity: int = 1_000_000  # transitions
    batch_size: int = 16  # sequences per update (per rank in a torchrun job)
    batch_length: int = 64  # steps per sequence
    chunk: int = 1024  # steps of all envs (rows of env.num_envs transitions) per file written to RUN_DIR/replay
    save: bool = True  # chunks in RUN_DIR/replay and the rest in the checkpoint; false: neither, so no resume=
    # also keep the replay in the training device's memory and gather batches there (a GPU then gets no batch
    # from the host: for images); the same batches either way
    on_device: bool = False
    # 1: store the model state acting and training reach at every step; a sampled sequence starts from the state
    # of the step before it, and each update writes its posterior states back (now) | 0: from the initial state
    context: int = 0
    # each env's experience, cut into sequences as it comes in, is trained on once ahead of the uniform samples
    online: bool = False


@dataclass
class TrainerConfig:
    steps: int = 20_000  # env steps (agent steps, after action repeat)
    # env steps of uniformly random actions before the first update; 0: the actor acts from the first step, and
    # updates begin once the replay holds one batch of sequences (batch_size x batch_length of them)
    prefill: int = 1000
    train_ratio: float = 64.0  # replayed steps per env step: batch_size * batch_length per update
    log_every: int = 1000  # env steps between TensorBoard writes
    eval_every: int = 5000  # env steps between evaluations (mode policy, separate env); 0: only at the end
    eval_episodes: int = 10  # episodes each evaluation plays; their mean, std, min and max are logged (eval/)
    eval_policy: str = "mode"  # the evaluation's actions: mode | sample (the exploring policy's, as upstream scores)
    # N: the first evaluation, every N-th after it and the run's last log one episode as a video, `eval/video` (an
    # animated GIF in TensorBoard's images tab: the first 500 frames, at most 128 pixels a side); 0: never; null:
    # every evaluation with image observations (their frames are at hand: a video costs its GIF alone, about 130 kB
    # for 500 frames of 64 x 64), never with vector observations. N with vector observations makes the eval env
    # with render_mode="rgb_array" and records its render() frames (MuJoCo and DMC render calls cost time)
    eval_video_every: int | None = None
    stop_return: float | None = None  # end the run once the mean eval return reaches this
    progress: bool = True  # progress bar in the terminal
    checkpoint_every: int = 10_000  # env steps between checkpoints; 0: only at the end and on SIGINT / SIGTERM
    max_nonfinite: int = 100  # consecutive updates skipped for a non-finite loss or gradient before the run stops
    openloop_every: int = 5000  # env steps between open-loop prediction errors (rssm/openloop.py); 0: never
    openloop_context: int = 5  # steps the posterior sees before the prior predicts alone
    openloop_horizons: list[int] = field(default_factory=lambda: [1, 5, 10, 15])  # prior steps to report


@dataclass
class WandbConfig:
    enabled: bool = False  # logger=wandb sets it
    project: str = "rssm"  # the W&B project the run is logged to
    entity: str = ""  # a user or team; "": wandb's default
    mode: str = "offline"  # offline: no network, `wandb sync RUN_DIR/wandb/offline-run-*` later | online | disabled


@dataclass
class MlflowConfig:
    enabled: bool = False  # logger=mlflow sets it
    tracking_uri: str = ""  # "": a SQLite store in the run directory, sqlite:///RUN_DIR/mlflow.db
    experiment: str = "rssm"  # the MLflow experiment the run is logged to


@dataclass
class LoggerConfig:
    """Where metrics go (configs/logger/, several at once: logger=[tensorboard,jsonl]); rssm/loggers.py."""

    tensorboard: bool = False  # RUN_DIR/events.out.tfevents.*
    csv: bool = False  # RUN_DIR/metrics.csv: step,tag,value
    jsonl: bool = False  # RUN_DIR/metrics.jsonl: one object per write, {"step": ..., "time": ..., tag: value}
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class OfflineConfig:
    """Training a world model from recorded data instead of an env (rssm/offline.py; with agent=world_model)."""

    minari: str = ""  # a Minari dataset id, read from its local copy
    replay: str = ""  # or another run's directory: its replay chunks
    holdout: float = 0.1  # share of the episodes (at least one) held out for the open-loop errors
    updates: int = 10_000  # world-model updates; trainer.log_every, openloop_every, checkpoint_every count these


@dataclass
class Config:
    seed: int = 0  # seeds the weights, the envs' episodes, the replay's sampling and the evaluations' episodes
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # fp32 | bf16 | fp16: forward passes under autocast in bfloat16 or float16 (with a dynamic loss scale); weights,
    # gradients and losses stay float32
    precision: str = "fp32"
    # auto | true | false: torch.compile the RSSM's posterior step (on a GPU also its prior step), the image encoder
    # and decoder, and acting (about a minute at the start). auto: with image observations, where it was measured
    # to pay (`compile_enabled` in rssm/build.py)
    compile: str = "auto"
    # torch.compile's mode for the RSSM's steps: default | reduce-overhead (on a CUDA device, CUDA graphs of the
    # steps forward and backward; on a CPU the same as default)
    compile_mode: str = "default"
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    wm: WorldModelConfig = field(default_factory=WorldModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    resume: str = ""  # run directory (or its checkpoint.pt) to continue
    allow_changes: list[str] = field(default_factory=list)  # keys that may differ from the resumed run's config


def register_configs() -> None:
    """Make the schema known to hydra as `rssm_schema` (the first entry of configs/config.yaml)."""
    ConfigStore.instance().store(name="rssm_schema", node=Config)


COMPILE_CHOICES = ("auto", "true", "false")
_WM_KEYS = tuple(f"wm.{f.name}" for f in fields(WorldModelConfig))
_RANGES = [  # (keys, test, what the test asks for)
    (("env.action_repeat", "env.image_size", "env.num_envs", "model.deter", "model.units", "model.groups",
      "model.classes", "model.cnn_depth", "replay.capacity", "replay.batch_size", "replay.batch_length",
      "replay.chunk", "trainer.steps", "trainer.log_every", "trainer.max_nonfinite", "trainer.openloop_context",
      "trainer.train_ratio", "trainer.eval_episodes", "wm.lr", "wm.eps", "agent.horizon",
      "agent.actor_lr", "agent.critic_lr", "agent.eps", "model.dyn_layers", "offline.updates"),
     lambda v: v > 0, "> 0"),
    (("env.time_limit", "env.noop_max", "model.layers", "model.blocks", "model.prior_layers", "trainer.prefill",
      "trainer.eval_every", "trainer.checkpoint_every", "trainer.openloop_every", "agent.lam", "agent.entropy",
      "agent.slow_rate", "agent.replay_value", "agent.grad_clip", "agent.actor_outscale", "optim.agc",
      "optim.warmup", "threads", "seed", *_WM_KEYS),
     lambda v: v >= 0, ">= 0"),
    (("model.bins",), lambda v: v >= 2, ">= 2 (two-hot needs two bins)"),
    (("model.head_layers", "model.mlp_layers"), lambda v: v is None or v >= 0, ">= 0 or null"),
    (("env.step_timeout",), lambda v: v is None or v > 0, "> 0 or null"),
    (("trainer.eval_video_every",), lambda v: v is None or v >= 0, ">= 0 or null"),
    (("replay.context",), lambda v: v in (0, 1), "0 or 1"),
    (("model.unimix", "agent.actor_unimix", "optim.beta1", "optim.beta2", "offline.holdout"), lambda v: 0.0 <= v < 1.0,
     "in [0, 1)"),
    (("env.sticky_actions",), lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    (("env.game",), lambda v: re.fullmatch(r"\w*", v, re.ASCII) is not None, "a game name such as ms_pacman"),
    (("env.task",), lambda v: re.fullmatch(r"\w*", v, re.ASCII) is not None, "a task name such as walker_walk"),
    (("env.camera",), lambda v: v >= -1, ">= -1"),
    (("agent.gamma",), lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
]
_CHOICES = {"env.vector": ("sync", "async"), "agent.kind": ("dreamer", "world_model"),
            "agent.actor_grad_discrete": ("reinforce", "backprop"),
            "agent.actor_grad_continuous": ("reinforce", "backprop"), "model.norm": ("rms", "layer"),
            "model.fan": ("in", "avg"), "model.twohot": ("symexp", "symlog"), "model.cnn": ("pooled", "strided"),
            "optim.name": ("laprop", "adam"), "precision": ("fp32", "bf16", "fp16"),
            "compile_mode": ("default", "reduce-overhead"), "trainer.eval_policy": ("mode", "sample"),
            "logger.wandb.mode": ("offline", "online", "disabled")}


def _check_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Reject keys that are not in the schema (hydra's `+key=value` can add them past the schema)."""
    known = {f.name: f for f in fields(schema)}
    for key in cfg.keys():
        if key not in known:
            raise UserError(f"unknown config key '{prefix}{key}'")
        sub = known[key].default_factory if known[key].default_factory is not MISSING else None
        if sub is not None and is_dataclass(sub):
            _check_keys(cfg[key], sub, f"{prefix}{key}.")


_FLOAT32_MAX = 3.4028234663852886e38  # the model computes in float32: a larger number overflows to inf there


def _check_finite(cfg: DictConfig) -> None:
    """Every float in the config is a number the model can hold: inf, nan or one beyond float32's range would pass
    the range checks and reach the model (torch's optimizers raise on a learning rate that overflows)."""
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
            raise UserError(f"{key} must be a finite float32 number, got {value}")


def _check_updates(cfg: DictConfig) -> None:
    """Refuse a run under which no update could happen: it would train nothing and still exit 0."""
    r, t = cfg.replay, cfg.trainer
    rows = r.capacity // cfg.env.num_envs  # each env's stretch of replay
    length = r.batch_length + r.context  # a sampled sequence, with the step whose state it starts from
    if rows < length:
        raise UserError(f"the replay holds {rows} steps per env (replay.capacity / env.num_envs), fewer than one "
                        f"sequence of replay.batch_length={r.batch_length} (+ replay.context={r.context}): no update "
                        f"could be made")
    if t.prefill >= t.steps:
        raise UserError(f"trainer.prefill ({t.prefill}) must be below trainer.steps ({t.steps}): updates begin "
                        f"after the prefill")
    if -(-t.steps // cfg.env.num_envs) < length:
        raise UserError(f"trainer.steps ({t.steps}) gives each of the {cfg.env.num_envs} envs fewer steps than one "
                        f"sequence of replay.batch_length={r.batch_length} (+ replay.context={r.context}): no update "
                        f"could be made")
    due = (t.steps - t.prefill) * t.train_ratio / (r.batch_size * r.batch_length)
    if due < 1:
        raise UserError(f"trainer.train_ratio={t.train_ratio} makes {due:.3g} updates due in the "
                        f"{t.steps - t.prefill} env steps after the prefill (each update replays replay.batch_size x "
                        f"replay.batch_length = {r.batch_size * r.batch_length} steps): at least 1 is needed")


def _check_algo(cfg: DictConfig) -> None:
    m = cfg.model
    if cfg.replay.context and cfg.agent.kind == "world_model":
        raise UserError("replay.context=1 stores the states the actor's model reaches while acting, and "
                        "agent=world_model has no actor: set replay.context=0")
    if m.blocks and m.deter % m.blocks:
        raise UserError(f"model.deter ({m.deter}) must be a multiple of model.blocks ({m.blocks})")
    if cfg.agent.replay_value_grad and cfg.agent.replay_value > 0 and not cfg.optim.joint:
        raise UserError("agent.replay_value_grad trains the world model from the critic's replay loss, which needs "
                        "optim.joint=true (the world model steps before the critic otherwise)")


def _check_env(cfg: DictConfig) -> None:
    e = cfg.env
    if e.task and (e.game or e.sticky_actions > 0 or e.noop_max > 0):
        raise UserError(f"env.task={e.task} names a DeepMind Control task: env.game, env.sticky_actions and "
                        f"env.noop_max are Atari's, leave them unset")


def _check_compute(cfg: DictConfig) -> None:
    """Where and how the run computes: the device, and compile (a bool, as a command line or a saved config gives
    it, stands for true or false)."""
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got '{device}'")
    if str(cfg.compile).lower() not in COMPILE_CHOICES:
        raise UserError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got '{cfg.compile}'")


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express. Raises UserError naming the key."""
    _check_keys(cfg, Config)
    try:  # an interpolation (`${...}`) that names no key, or a resolver's error
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{key + ': ' if key else ''}cannot resolve the config: {detail}") from None
    _check_env(cfg)
    _check_finite(cfg)
    for keys, ok, wanted in _RANGES:
        for key in keys:
            value = OmegaConf.select(cfg, key)
            if not ok(value):
                raise UserError(f"{key} must be {wanted}, got {value}")
    for key, allowed in _CHOICES.items():
        if OmegaConf.select(cfg, key) not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got '{OmegaConf.select(cfg, key)}'")
    for key in ("model.cnn_keys", "model.mlp_keys"):
        try:
            re.compile(OmegaConf.select(cfg, key))
        except re.error as e:
            raise UserError(f"{key} is not a regular expression: {e}") from None
    _check_algo(cfg)
    horizons = list(cfg.trainer.openloop_horizons)
    if not horizons or horizons[0] < 1 or any(a >= b for a, b in pairwise(horizons)):
        raise UserError(f"trainer.openloop_horizons must be increasing and >= 1, got {horizons}")
    _check_compute(cfg)
    for key in cfg.allow_changes:
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise UserError(f"allow_changes names '{key}', which is not a config key")
    _check_updates(cfg)


_ABSENT = object()
# Keys that may differ between a run and its resumption without being allowed explicitly: they change where
# and how a run computes, or what it shows, not what it learns (evaluation and open-loop errors draw their own
# random numbers). Threads, devices and compilation may change the last bits of floating-point sums; bfloat16
# (`precision`) more than that, within the tracking its test checks.
FREE_KEYS = ("resume", "allow_changes", "threads", "device", "precision", "compile", "compile_mode", "replay.on_device",
             "trainer.progress", "logger", "trainer.log_every", "trainer.eval_every", "trainer.eval_episodes",
             "trainer.eval_policy", "trainer.eval_video_every",
             "trainer.checkpoint_every", "trainer.openloop_every", "trainer.openloop_context",
             "trainer.openloop_horizons")
# Keys added with image observations, Atari and DeepMind Control: a run saved before them had vector observations,
# no Atari game and no DMC task, which none of their defaults changes, so their absence from its config is no
# difference. (Pixels on such a run would change the model: the checkpoint's shapes refuse it.)
_ADDED_KEYS = ("env.pixels", "env.pixels_keep_state", "env.image_size", "env.grayscale", "env.game",
               "env.sticky_actions", "env.noop_max", "model.cnn_depth", "model.cnn_keys", "model.mlp_keys",
               "env.task", "env.camera")
# Keys added later whose absence from a run's config means the value given here (the behaviour before them).
# The algorithm switches (configs/algo/) came later still: a run without them ran DreamerV3 2023.
ABSENT_MEANS = {"env.num_envs": 1, "env.vector": "sync", "agent.replay_value": 0.0, "agent.cont_prob": False,
                "replay.save": True, "model.norm": "layer", "model.fan": "avg", "model.blocks": 0,
                "model.dyn_layers": 1, "model.prior_layers": 1, "model.learned_initial": True,
                "model.head_layers": None, "model.twohot": "symlog", "model.cnn": "strided",
                "agent.replay_value_grad": False,
                "agent.contdisc": False, "agent.actor_unimix": 0.01, "agent.actor_outscale": 1.0,
                "optim.name": "adam", "optim.joint": False, "optim.agc": 0.0, "optim.warmup": 0, "optim.beta1": 0.9,
                "optim.beta2": 0.999, "logger.tensorboard": True, "model.mlp_layers": None,
                "model.post_joint_init": False, "replay.context": 0, "replay.online": False,
                "trainer.eval_policy": "mode"}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def saved_run_config(saved: dict) -> DictConfig:
    """A run's config as its checkpoint or config.yaml holds it, over the schema: a key the run's version did not
    have yet means what it meant then (`ABSENT_MEANS`), or else the schema's default."""
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(unflatten(ABSENT_MEANS)), saved)


def config_changes(saved: dict, cfg: DictConfig, everything: bool = False) -> list[str]:
    """Keys whose value in `cfg` differs from the run's `saved` config and that `cfg.allow_changes` does not
    allow (with `everything`: all of them but `resume` and `allow_changes`), each as 'key: saved -> new'."""
    old, new = {**ABSENT_MEANS, **flatten(saved)}, flatten(OmegaConf.to_container(cfg, resolve=True))
    allowed = {"resume", "allow_changes"} if everything else set(cfg.allow_changes) | set(FREE_KEYS)
    keys = [k for k in sorted(old.keys() | new.keys())
            if old.get(k, _ABSENT) != new.get(k, _ABSENT) and not any(k == a or k.startswith(a + ".") for a in allowed)
            and not (k in _ADDED_KEYS and k not in old)]
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in keys]


def check_changes(saved: dict, cfg: DictConfig, where: Path | str) -> None:
    """Raise UserError, showing the differences, if `cfg` changes keys of the run's `saved` config (its
    checkpoint at `where`) that are neither free nor allowed."""
    changes = config_changes(saved, cfg)
    if changes:
        keys = ",".join(c.split(":")[0] for c in changes)
        raise UserError(f"config differs from the run's ({where}): {'; '.join(changes)}. Resume with the run's "
                        f"own config (resume=RUN_DIR alone), or allow the change with allow_changes=[{keys}]")
    _check_data_changes(saved, cfg)


def _check_data_changes(saved: dict, cfg: DictConfig) -> None:
    """Refuse an allowed change that the saved replay cannot take: its chunk files hold rows of `env.num_envs`
    transitions, `replay.chunk` rows each, and no model states unless `replay.context` stored them. (An offline
    run keeps no replay of its own; the model's shapes are checked against the checkpoint's weights.)"""
    old = {**ABSENT_MEANS, **flatten(saved)}
    if old.get("offline.minari") or old.get("offline.replay"):
        return
    envs = old.get("env.num_envs")
    if envs != cfg.env.num_envs:
        raise UserError(f"env.num_envs cannot change on resume: the replay's chunks hold {envs} env"
                        f"{'s' if envs != 1 else ''} per row")
    chunk = old.get("replay.chunk", ReplayConfig.chunk)
    if chunk != cfg.replay.chunk:
        raise UserError(f"replay.chunk cannot change on resume: the replay's chunk files hold {chunk} rows each")
    if not old.get("replay.context") and cfg.replay.context:
        raise UserError("replay.context=1 cannot be given on resume of a run with replay.context=0: its replay "
                        "holds no model states to start sequences from")
