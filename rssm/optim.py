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

`Adam` is the same machinery in Adam's order (momentum of the raw gradient, then division by the RMS), for
DreamerV3 2023. Both keep their step counts on the parameters' device and take `step(finite=flag)`: where the
0-dim bool `flag` is False, the step changes no parameter and no state, decided on the device: an update whose
loss or gradient is not finite is skipped without reading anything back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """The learning rate of update `step` (1 for the first): linear from 0 at update 1 to `lr` at `warmup` + 1."""
    if warmup <= 0:
        return lr
    return lr * min(1.0, (step - 1) / warmup)


_SETTINGS = ("lr", "betas", "eps", "agc", "agc_floor", "warmup")  # of every param group


class _Moments(Optimizer):
    """The shared machinery of `LaProp` and `Adam`: per-tensor step counts on the device, AGC, the warm-up, and
    the skip flag. Subclasses give `_direction`, the update before the learning rate and bias correction."""

    name = ""

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float,
                 betas: tuple[float, float], eps: float, agc: float, agc_floor: float, warmup: int):
        _check_settings(self.name, lr, betas, eps, agc, agc_floor, warmup)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, agc=agc, agc_floor=agc_floor, warmup=warmup))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        _check_settings(self.name, g["lr"], g["betas"], g["eps"], g["agc"], g["agc_floor"], g["warmup"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then each step count made a float32 tensor on its parameter's device (a count saved
        as a Python int, or as torch's CPU tensor, would cost a host sync or a copy in every `step()`), and the
        settings a saved group lacks taken from this optimizer's defaults."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key in _SETTINGS:
                group.setdefault(key, self.defaults[key])
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    state["step"] = torch.tensor(float(state["step"]), device=p.device)  # its own: never shared

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None,
             finite: torch.Tensor | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; parameters whose `.grad` is None are left alone.
        With AGC on, each `.grad` is left holding the clipped gradient (scaled in place, as `clip_grad_norm_`
        does): a copy would cost a tensor the size of the parameters in every step.

        Args:
            finite: a 0-dim bool tensor; where False, nothing changes (the gradients are zeroed). None: step.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach ops need one device and dtype per call.
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self.name} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), device=p.device)
                    state["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buckets.setdefault((p.device, p.dtype), []).append(p)
            for (device, _), params in buckets.items():
                self._update(params, group, None if finite is None else finite.to(device))
        return loss

    def _update(self, params: list[torch.Tensor], group: dict[str, Any], finite: torch.Tensor | None) -> None:
        """One update of tensors of one group that share a device and dtype: foreach ops over them all. Every
        coefficient that depends on the step counts or the skip flag is a device tensor: no host sync."""
        b1, b2 = group["betas"]
        grads = [p.grad for p in params]
        steps = [self.state[p]["step"] for p in params]
        nus = [self.state[p]["nu"] for p in params]
        mus = [self.state[p]["mu"] for p in params]
        if finite is None:
            go = torch.ones((), device=params[0].device)
        else:
            go = finite.to(torch.float32)  # 1: step, 0: change nothing
            for g in grads:
                g.masked_fill_(~finite, 0.0)  # a skipped step's gradient may hold nan: it must not reach the state
        torch._foreach_add_(steps, [go] * len(steps))  # lists of 0-dim tensors: no host read of `go`
        if group["agc"] > 0:
            # Per-tensor norms stay on the device: (N,) vectors.
            gnorm = torch.stack(torch._foreach_norm(grads))  # (N,)
            upper = group["agc"] * torch.stack(torch._foreach_norm(params)).clamp(min=group["agc_floor"])  # (N,)
            scale = 1 / (gnorm / upper).clamp(min=1.0)  # (N,)
            torch._foreach_mul_(grads, list(scale.unbind(0)))
        t = torch.stack(steps).clamp(min=1.0)  # (N,): a first step that is skipped still divides by a count of 1
        # Decays of 1 where the step is skipped: the zeroed gradient then leaves the moments as they were.
        decay1, decay2 = 1 - (1 - b1) * go, 1 - (1 - b2) * go
        # (N,) bias corrections 1 - b^t, as -expm1(t log b): exact to float32's precision where 1 - b^t is small
        correct1, correct2 = (-torch.expm1(t * math.log(b)) if b > 0 else torch.ones_like(t) for b in (b1, b2))
        warm = ((t - 1) / group["warmup"]).clamp(max=1.0) if group["warmup"] > 0 else torch.ones_like(t)
        step_size = group["lr"] * warm * go / correct1  # (N,)
        direction = self._direction(grads, nus, mus, b1, b2, decay1, decay2, correct2, group["eps"])
        torch._foreach_sub_(params, torch._foreach_mul(direction, list(step_size.unbind(0))))

    def _direction(self, grads, nus, mus, b1, b2, decay1, decay2, correct2, eps) -> list[torch.Tensor]:
        """Update the moments in place and return the update's direction (read, not changed, by the caller)."""
        raise NotImplementedError


class LaProp(_Moments):
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

    name = "LaProp"

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 4e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-20, agc: float = 0.3,
                 agc_floor: float = 1e-3, warmup: int = 1000):
        super().__init__(params, lr, betas, eps, agc, agc_floor, warmup)

    def _direction(self, grads, nus, mus, b1, b2, decay1, decay2, correct2, eps):
        """nu <- b2 nu + (1 - b2) g^2; mu <- b1 mu + (1 - b1) g / (sqrt(nu / (1 - b2^t)) + eps); returns mu."""
        torch._foreach_mul_(nus, [decay2] * len(nus))
        torch._foreach_addcmul_(nus, grads, grads, value=1 - b2)
        denom = torch._foreach_div(nus, list(correct2.unbind(0)))
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        torch._foreach_mul_(mus, [decay1] * len(mus))
        torch._foreach_addcdiv_(mus, grads, denom, value=1 - b1)
        return mus


class Adam(_Moments):
    """Adam (Kingma and Ba, 2015) as torch's `torch.optim.Adam` computes it, with this module's step counts on the
    device and skip flag, and optionally its AGC and warm-up (both off by default): DreamerV3 2023's optimizer.
    Loads the state of a `torch.optim.Adam` (its `exp_avg` and `exp_avg_sq`), so that a run saved with it resumes.
    """

    name = "Adam"

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, agc: float = 0.0,
                 agc_floor: float = 1e-3, warmup: int = 0):
        super().__init__(params, lr, betas, eps, agc, agc_floor, warmup)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        renamed = {k: {("mu" if n == "exp_avg" else "nu" if n == "exp_avg_sq" else n): v for n, v in s.items()}
                   for k, s in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": renamed})

    def _direction(self, grads, nus, mus, b1, b2, decay1, decay2, correct2, eps):
        """mu <- b1 mu + (1 - b1) g; nu <- b2 nu + (1 - b2) g^2; returns mu / (sqrt(nu) / sqrt(1 - b2^t) + eps)."""
        torch._foreach_mul_(mus, [decay1] * len(mus))
        torch._foreach_add_(mus, grads, alpha=1 - b1)
        torch._foreach_mul_(nus, [decay2] * len(nus))
        torch._foreach_addcmul_(nus, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(nus)
        torch._foreach_div_(denom, list(correct2.sqrt().unbind(0)))
        torch._foreach_add_(denom, eps)
        return torch._foreach_div(mus, denom)


def _check_settings(name: str, lr: float, betas: tuple[float, float], eps: float, agc: float, agc_floor: float,
                    warmup: int) -> None:
    if not lr >= 0:
        raise ValueError(f"{name}: lr must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"{name}: betas must be two values in [0, 1), got {betas}")
    if not eps >= 0:
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")
    if not agc >= 0:
        raise ValueError(f"{name}: agc must be >= 0 (0 turns clipping off), got {agc}")
    if not agc_floor > 0:
        raise ValueError(f"{name}: agc_floor must be > 0, got {agc_floor}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"{name}: warmup must be an int >= 0 (0 turns the warm-up off), got {warmup!r}")


class LossScale:
    """Dynamic loss scaling for float16 forward passes, kept on the device (torch's `GradScaler` decides on the
    host, reading its overflow flag back every step).

    The losses are multiplied by `value` before backward, so that small gradients of float16 activations do not
    flush to zero; `unscale_` divides the gradients back before they are clipped and used. An update whose
    gradient is not finite (an overflow) is skipped by the caller's finite flag, and `update` halves the scale;
    after `interval` finite updates in a row it doubles. The defaults are `GradScaler`'s.
    """

    def __init__(self, device: torch.device, init: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5,
                 interval: int = 2000):
        self.growth, self.backoff, self.interval = growth, backoff, interval
        self.value = torch.full((), init, device=device)  # () float32
        self.good = torch.zeros((), dtype=torch.int64, device=device)  # finite updates since the last change

    def unscale_(self, grads: list[torch.Tensor]) -> None:
        """Divide gradients in place by the scale their losses were multiplied with."""
        if grads:
            torch._foreach_mul_(grads, [self.value.reciprocal()] * len(grads))  # 0-dim tensors: no host read

    @torch.no_grad()
    def update(self, finite: torch.Tensor) -> None:
        """After an update: back off where its gradient was not finite (0-dim bool `finite`), grow after
        `interval` finite ones in a row. No host sync."""
        finite = finite.to(self.value.dtype)  # 1: finite, 0: overflow
        good = (self.good + 1) * finite.long()
        grow = (good >= self.interval).to(self.value.dtype)
        self.value.mul_(finite * (1.0 + (self.growth - 1.0) * grow) + (1.0 - finite) * self.backoff)
        self.good.copy_(good * (1 - grow.long()))

    def state_dict(self) -> dict[str, float | int]:
        return {"value": float(self.value), "good": int(self.good)}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.value.fill_(state["value"])
        self.good.fill_(state["good"])
