"""Building blocks: MLP, GRU cell with LayerNorm, and a linear layer for sequential loops.

Nothing here reads a config: every size is an explicit argument.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-3


def init_weights(module: nn.Module) -> None:
    """Truncated-normal init scaled by the average fan, as DreamerV3 initialises its dense layers."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * m.weight[0][0].numel()
            std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, 0.0, std, -2.0 * std, 2.0 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def zero_output(layer: nn.Linear) -> None:
    """Zero an output layer so that a head starts by predicting 0 (reward and critic heads)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """`layers` x (Linear -> LayerNorm -> SiLU), then an optional linear output layer."""

    def __init__(self, in_dim: int, units: int, layers: int, out_dim: int | None = None):
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(in_dim if i == 0 else units, units, bias=False),
                       nn.LayerNorm(units, eps=NORM_EPS), nn.SiLU()]
        self.hidden = nn.Sequential(*blocks)
        last = units if layers > 0 else in_dim
        self.out = nn.Linear(last, out_dim) if out_dim is not None else None
        self.out_dim = out_dim if out_dim is not None else last
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden(x)
        return self.out(x) if self.out is not None else x


def gru_update(gates: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """DreamerV3's GRU given normalised gate pre-activations (B, 3D) and the previous state (B, D)."""
    reset, cand, update = gates.chunk(3, dim=-1)
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1.0)  # biased towards keeping the old state
    return update * cand + (1.0 - update) * h


class _Token(torch.autograd.Function):
    """A scalar zero that depends on a weight. Its backward runs after every step that used it,
    so it can turn the collected per-step inputs and output-gradients into one weight gradient."""

    @staticmethod
    def forward(ctx, weight, store):
        ctx.store = store
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        s = ctx.store
        g = s.grads[: s.used].flatten(0, 1)  # (T * B, out)
        x = s.inputs[: s.used].flatten(0, 1)  # (T * B, in)
        return g.t() @ x, None  # (out, in)


class _StepLinear(torch.autograd.Function):
    """x @ W.T for one loop step; stores x and the output gradient instead of forming dW per step."""

    @staticmethod
    def forward(ctx, x, weight, token, store, t):
        store.inputs[t].copy_(x)
        ctx.save_for_backward(weight)
        ctx.store, ctx.t = store, t
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        ctx.store.grads[ctx.t].copy_(grad)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        return grad_x, None, grad.new_zeros(()), None, None


class _StepStore:
    def __init__(self, weight: torch.Tensor, steps: int, rows: int):
        out_dim, in_dim = weight.shape
        self.inputs = weight.new_empty(steps, rows, in_dim)  # (T, B, in)
        self.grads = weight.new_zeros(steps, rows, out_dim)  # (T, B, out)
        self.used = 0


class LoopLinear(nn.Linear):
    """A bias-free linear layer applied once per step of a sequential loop.

    Autograd would form a (out x in) weight gradient at every step from B rows, which is memory-bound
    and slow for small B. `bind(steps, rows)` instead returns a per-loop function that records each
    step's input and output gradient; the weight gradient is then one (T*B)-row matmul. Values and
    gradients are the same as `F.linear`; outside autograd it is `F.linear`.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim, bias=False)

    def bind(self, steps: int, rows: int):
        weight = self.weight
        if not (torch.is_grad_enabled() and weight.requires_grad):
            return lambda x, t: F.linear(x, weight)
        store = _StepStore(weight.detach(), steps, rows)
        token = _Token.apply(weight, store)

        def step(x: torch.Tensor, t: int) -> torch.Tensor:
            store.used = max(store.used, t + 1)
            return _StepLinear.apply(x, weight.detach(), token, store, t)

        return step
