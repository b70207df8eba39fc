"""Typed config schema. Hydra merges the YAML files in configs/ into these dataclasses, so an unknown
key or a value of the wrong type fails while the config is composed, before anything is built."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig


class UserError(Exception):
    """A problem the user can fix (bad config value, unknown env id, ...): shown as one line, exit 2."""


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"  # any registered gymnasium id
    action_repeat: int = 1
    time_limit: int = 0  # max agent steps per episode; 0 keeps the env's own limit


@dataclass
class ModelConfig:
    deter: int = 256  # GRU state size
    units: int = 256  # hidden width of every MLP
    layers: int = 1  # hidden layers of encoder, decoder and heads
    groups: int = 32  # stochastic state: G categoricals ...
    classes: int = 32  # ... of C classes each
    unimix: float = 0.01
    bins: int = 255  # two-hot bins of the reward head


@dataclass
class WorldModelConfig:
    rec_scale: float = 1.0
    reward_scale: float = 1.0
    cont_scale: float = 1.0
    kl_dyn_scale: float = 0.5
    kl_rep_scale: float = 0.1
    free_bits: float = 1.0
    lr: float = 1e-4
    eps: float = 1e-8
    grad_clip: float = 1000.0


@dataclass
class ReplayConfig:
    capacity: int = 1_000_000  # transitions
    batch_size: int = 16
    batch_length: int = 64


@dataclass
class TrainerConfig:
    steps: int = 20_000  # env steps (agent steps, after action repeat)
    prefill: int = 1000  # env steps of data collected before the first update
    train_ratio: float = 64.0  # replayed steps per env step: batch_size * batch_length per update
    log_every: int = 1000  # env steps between TensorBoard writes
    progress: bool = True  # progress bar in the terminal


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    wm: WorldModelConfig = field(default_factory=WorldModelConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Make the schema known to hydra as `rssm_schema` (the first entry of configs/config.yaml)."""
    ConfigStore.instance().store(name="rssm_schema", node=Config)


_POSITIVE = {
    "env": ("action_repeat",),
    "model": ("deter", "units", "groups", "classes", "bins"),
    "replay": ("capacity", "batch_size", "batch_length"),
    "trainer": ("steps", "log_every"),
    "wm": ("lr", "eps", "grad_clip"),
}
_NON_NEGATIVE = {
    "env": ("time_limit",), "model": ("layers", "unimix"), "trainer": ("prefill", "train_ratio"),
    "wm": tuple(f.name for f in fields(WorldModelConfig)),
}


def _check_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Reject keys that are not in the schema (hydra's `+key=value` can add them past the schema)."""
    known = {f.name: f for f in fields(schema)}
    for key in cfg.keys():
        if key not in known:
            raise UserError(f"unknown config key '{prefix}{key}'")
        sub = known[key].default_factory if known[key].default_factory is not MISSING else None
        if sub is not None and is_dataclass(sub):
            _check_keys(cfg[key], sub, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express. Raises UserError naming the key."""
    _check_keys(cfg, Config)
    for section, keys in _POSITIVE.items():
        for key in keys:
            if cfg[section][key] <= 0:
                raise UserError(f"{section}.{key} must be > 0, got {cfg[section][key]}")
    for section, keys in _NON_NEGATIVE.items():
        for key in keys:
            if cfg[section][key] < 0:
                raise UserError(f"{section}.{key} must be >= 0, got {cfg[section][key]}")
    if not 0.0 <= cfg.model.unimix < 1.0:
        raise UserError(f"model.unimix must be in [0, 1), got {cfg.model.unimix}")
    if cfg.threads < 0:
        raise UserError(f"threads must be >= 0, got {cfg.threads}")
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got '{device}'")
