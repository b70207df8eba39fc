"""LaProp with adaptive gradient clipping and a linear learning-rate warm-up: DreamerV3's current optimizer.

It follows danijar/dreamerv3 at commit e3f02248693a79dc8b0ebd62c93683888ddaccfe: `Agent._make_opt` in
`dreamerv3/agent.py` chains `clip_by_agc`, `scale_by_rms` and `scale_by_momentum` from `embodied/jax/opt.py`
with optax's `scale_by_learning_rate(join_schedules([linear_schedule(0, lr, warmup), constant(lr)], [warmup]))`.
Per parameter tensor p with gradient g, at its t-th update (t = 1, 2, ...):

    g  <- g / max(1, ||g|| / (agc * max(agc_floor, ||p||)))     AGC, L2 norms over the whole tensor; agc=0: off
    nu <- b2 nu + (1 - b2) g^2
    u  =  g / (sqrt(nu / (1 - b2^t)) + eps)                     RMS scaling first ...
    mu <- b1 mu + (1 - b1) u
    p  <- p - lr_t mu / (1 - b1^t)                              ... then momentum (LaProp, not Adam's order)
    lr_t = lr min(1, (t - 1) / warmup)                          warmup=0: lr_t = lr

optax evaluates the schedule at the count of updates made before this one, so the first update has lr_t = 0:
it moves nothing but fills nu and mu, and lr_t reaches lr at update warmup + 1.

With AGC on, `step()` leaves each `.grad` holding its clipped gradient (scaled in place, as torch's
`clip_grad_norm_` does). Upstream keeps one count for the whole module tree; here each tensor keeps its own, so
a tensor whose `.grad` is None is skipped and its count does not advance. The two agree when every tensor steps
every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """The learning rate of update `step` (1 for the first): linear from 0 at update 1 to `lr` at `warmup` + 1."""
    if warmup <= 0:
        return lr
    return lr * min(1.0, (step - 1) / warmup)


class LaProp(Optimizer):
    """DreamerV3's optimizer (see the module docstring for the formulas and the upstream version).

    Args:
        params: tensors or param groups; a group may set any of the keyword arguments below.
        lr: learning rate after the warm-up.
        betas: (b1, b2), the decay of the momentum and of the squared-gradient average.
        eps: added to the RMS denominator.
        agc: adaptive-clipping ratio of gradient norm to parameter norm; 0 turns clipping off.
        agc_floor: the parameter norm used where a tensor's norm is smaller (a zero tensor can still move).
        warmup: updates over which the learning rate rises linearly from 0; 0 turns the warm-up off.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 4e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-20, agc: float = 0.3,
                 agc_floor: float = 1e-3, warmup: int = 1000):
        _check_settings(lr, betas, eps, agc, agc_floor, warmup)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, agc=agc, agc_floor=agc_floor, warmup=warmup))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        _check_settings(g["lr"], g["betas"], g["eps"], g["agc"], g["agc_floor"], g["warmup"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then each step count made a Python int: a count saved as a tensor (as torch's own
        optimizers keep theirs) would otherwise cost a host sync in every `step()`."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = int(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; parameters whose `.grad` is None are left alone.
        With AGC on, each `.grad` is left holding the clipped gradient (scaled in place, as `clip_grad_norm_`
        does): a copy would cost a tensor the size of the parameters in every step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach ops need one device and dtype per call, and one step count gives one scalar per call.
            buckets: dict[tuple[torch.device, torch.dtype, int], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LaProp does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                buckets.setdefault((p.device, p.dtype, state["step"]), []).append(p)
            for (_, _, t), params in buckets.items():
                self._update(params, group, t)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict[str, Any], t: int) -> None:
        """Update `t` of tensors of one group that share a device and dtype: foreach ops over them all, in place
        but for one temporary (the RMS denominator), as torch's foreach Adam."""
        b1, b2 = group["betas"]
        grads = [p.grad for p in params]
        nus = [self.state[p]["nu"] for p in params]
        mus = [self.state[p]["mu"] for p in params]
        if group["agc"] > 0:
            # Per-tensor norms stay on the device: (N,) vectors, no host sync.
            gnorm = torch.stack(torch._foreach_norm(grads))  # (N,)
            upper = group["agc"] * torch.stack(torch._foreach_norm(params)).clamp(min=group["agc_floor"])  # (N,)
            scale = 1 / (gnorm / upper).clamp(min=1.0)  # (N,)
            torch._foreach_mul_(grads, list(scale.unbind(0)))
        torch._foreach_mul_(nus, b2)
        torch._foreach_addcmul_(nus, grads, grads, value=1 - b2)
        denom = torch._foreach_div(nus, 1 - b2**t)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_mul_(mus, b1)
        torch._foreach_addcdiv_(mus, grads, denom, value=1 - b1)
        torch._foreach_add_(params, mus, alpha=-warmup_lr(group["lr"], group["warmup"], t) / (1 - b1**t))


def _check_settings(lr: float, betas: tuple[float, float], eps: float, agc: float, agc_floor: float,
                    warmup: int) -> None:
    if not lr >= 0:
        raise ValueError(f"LaProp: lr must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"LaProp: betas must be two values in [0, 1), got {betas}")
    if not eps >= 0:
        raise ValueError(f"LaProp: eps must be >= 0, got {eps}")
    if not agc >= 0:
        raise ValueError(f"LaProp: agc must be >= 0 (0 turns clipping off), got {agc}")
    if not agc_floor > 0:
        raise ValueError(f"LaProp: agc_floor must be > 0, got {agc_floor}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"LaProp: warmup must be an int >= 0 (0 turns the warm-up off), got {warmup!r}")
