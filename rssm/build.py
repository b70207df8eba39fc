"""Turns a config into the objects of a run: device, envs, world model and agent. `rssm-train`, `rssm-eval`,
`rssm-dream` and the scripts build through here; this module imports none of them."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from omegaconf import DictConfig

from rssm.agent import Agent, OptimSettings
from rssm.behavior import Actor, BehaviorSettings, Critic
from rssm.collector import make_envs
from rssm.config import UserError
from rssm.distributed import SINGLE, Ranks
from rssm.dmc import make_dmc_env
from rssm.envs import EnvSpec, atari_id, close_env, make_env
from rssm.networks import Arch
from rssm.world_model import LossScales, Variant, WorldModel, select_obs_keys


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for, but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a device: give auto, cpu, cuda or cuda:N") from None


def gigabytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


@contextmanager
def allocating(what: str) -> Iterator[None]:
    """Turn a failed allocation in the block into one UserError line: a config (a model's width, an image's size)
    that asks for more memory than the machine has."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "can't allocate memory" not in text:
            raise
        torch_asked, numpy_asked = re.search(r"allocate (\d+) bytes", text), re.search(r"allocate ([\d.]+ \w+)", text)
        size = gigabytes(int(torch_asked[1])) if torch_asked else numpy_asked[1] if numpy_asked else None
        raise UserError(f"not enough memory for {what}" + (f": one array alone needs {size}" if size else "")) \
            from None


COMPILE_BACKEND = "inductor"  # torch.compile's backend with compile=true


def compile_enabled(setting: str, images: bool, device: torch.device) -> bool:
    """Whether `compile=setting` (auto | true | false, or a bool) compiles. auto compiles a model with image
    observations, where it was measured to pay on a CPU (docs/benchmarks/speed.md: the image world-model update
    1.11x to 1.79x as fast, the first update's compiling paid back within a few updates), and where torch.compile
    has its compiler (a C++ compiler on a CPU, triton on a GPU), so that a default run never stops for the lack of
    one; a model of vectors stays eager (a CPU learning run gained 1%, less than its compiling took)."""
    setting = str(setting).lower()
    if setting != "auto":
        return setting == "true"
    if not images:
        return False
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()  # raises where none is found
    except Exception:  # noqa: BLE001 - any failure to find one means eager
        return False
    return True


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision=` on `device`, None for float32. Raises UserError where it cannot run."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision={precision} was asked for, but this GPU has no bfloat16 support: use "
                        f"precision=fp16 (with a loss scale) or fp32")
    return torch.bfloat16


def env_id(cfg: DictConfig) -> str:
    """The env the config names: dmc/{env.task} for a DeepMind Control task, `env.game`'s Atari id, else `env.id`."""
    if cfg.env.task:
        return f"dmc/{cfg.env.task}"
    return atari_id(cfg.env.game) if cfg.env.game else cfg.env.id


def build_env(cfg: DictConfig, render_mode: str | None = None):
    """The env the config describes and its EnvSpec. Raises UserError if rssm cannot use it."""
    e = cfg.env
    if e.task:
        return make_dmc_env(e.task, e.action_repeat, e.time_limit, render_mode, e.pixels, e.image_size,
                            e.pixels_keep_state, e.grayscale, e.camera)
    return make_env(env_id(cfg), e.action_repeat, e.time_limit, render_mode, e.pixels, e.image_size,
                    e.pixels_keep_state, grayscale=e.grayscale, sticky_actions=e.sticky_actions, noop_max=e.noop_max)


def build_envs(cfg: DictConfig, num: int | None = None, render_mode: str | None = None):
    """`num` (default `env.num_envs`) copies of the config's env stepped together (`env.vector`: sync | async),
    and their EnvSpec. One env is made here first, so that a problem with it is a UserError in this process."""
    with allocating(f"the env's observations (env.image_size={cfg.env.image_size})"):
        env, spec = build_env(cfg, render_mode)
    close_env(env)
    return make_envs(lambda: build_env(cfg, render_mode)[0], num or cfg.env.num_envs, cfg.env.vector), spec


def mlp_layers(cfg: DictConfig) -> int:
    """Hidden layers of the encoder, decoder, actor and critic MLPs: `model.mlp_layers`, or the size preset's
    `model.layers` where that is null."""
    m = cfg.model
    return m.layers if m.mlp_layers is None else m.mlp_layers


def build_world_model(cfg: DictConfig, obs_shapes: dict[str, tuple[int, ...]], action_dim: int) -> WorldModel:
    """The world model for the observation keys `model.cnn_keys` and `model.mlp_keys` select."""
    m = cfg.model
    shapes = select_obs_keys(obs_shapes, m.cnn_keys, m.mlp_keys)
    variant = Variant(Arch(m.norm, m.fan), m.blocks, m.dyn_layers, m.prior_layers, m.learned_initial, m.head_layers,
                      m.twohot, m.cnn, m.post_joint_init)
    return WorldModel(shapes, action_dim, m.deter, m.units, mlp_layers(cfg), m.groups, m.classes, m.unimix, m.bins,
                      m.cnn_depth, variant)


def optim_settings(cfg: DictConfig) -> dict[str, OptimSettings]:
    """The optimizer settings of the world model, actor and critic."""
    o, a, w = cfg.optim, cfg.agent, cfg.wm
    extra = {"name": o.name, "agc": o.agc, "warmup": o.warmup, "betas": (o.beta1, o.beta2)}
    return {"wm": OptimSettings(w.lr, w.eps, w.grad_clip, **extra),
            "actor": OptimSettings(a.actor_lr, a.eps, a.grad_clip, **extra),
            "critic": OptimSettings(a.critic_lr, a.eps, a.grad_clip, **extra)}


def continue_target(cfg: DictConfig) -> float:
    """What the continue head learns for a step after which the episode goes on: 1, or the discount where the
    agent folds it into the head (`agent.contdisc`, today's DreamerV3). Its output over this is P(continue)."""
    a = cfg.agent
    return a.gamma if a.contdisc and a.kind == "dreamer" else 1.0


def build_agent(cfg: DictConfig, spec: EnvSpec, device: torch.device, ranks: Ranks = SINGLE) -> Agent:
    """The agent the config asks for, on `device`: a world model, plus actor and critic for `dreamer`; one rank of
    a data-parallel job with `ranks`."""
    m = cfg.model
    with allocating(f"the model (model.deter={m.deter}, model.units={m.units}, model.groups={m.groups}, "
                    f"model.classes={m.classes}) on {device}"):
        return _build_agent(cfg, spec, device, ranks)


def _build_agent(cfg: DictConfig, spec: EnvSpec, device: torch.device, ranks: Ranks) -> Agent:
    w, a, m = cfg.wm, cfg.agent, cfg.model
    wm = build_world_model(cfg, spec.obs_shapes, spec.action_dim).to(device)
    scales = LossScales(w.rec_scale, w.reward_scale, w.cont_scale, w.kl_dyn_scale, w.kl_rep_scale, w.free_bits,
                        continue_target(cfg))
    opt = optim_settings(cfg)
    compiled = compile_enabled(cfg.compile, wm.image_encoder is not None, device)
    shared = {"precision": autocast_dtype(cfg.precision, device), "compile": COMPILE_BACKEND if compiled else None,
              "compile_mode": cfg.compile_mode, "ranks": ranks}
    if a.kind == "world_model":
        return Agent(wm, scales, opt["wm"], **shared)
    arch = Arch(m.norm, m.fan)
    layers = mlp_layers(cfg)
    actor = Actor(wm.rssm.feat_dim, m.units, layers, list(spec.action_dims), spec.discrete, a.actor_unimix,
                  outscale=a.actor_outscale, arch=arch).to(device)
    critic = Critic(wm.rssm.feat_dim, m.units, layers, m.bins, m.twohot, arch).to(device)
    grad = a.actor_grad_discrete if spec.discrete else a.actor_grad_continuous
    behavior = BehaviorSettings(a.horizon, a.gamma, a.lam, a.entropy, a.slow_rate, backprop=grad == "backprop",
                                replay_value=a.replay_value, replay_value_grad=a.replay_value_grad,
                                cont_prob=a.cont_prob, contdisc=a.contdisc)
    return Agent(wm, scales, opt["wm"], actor, critic, behavior, opt["actor"], opt["critic"], joint=cfg.optim.joint,
                 **shared)
