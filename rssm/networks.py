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
    return torch.lerp(h, cand, update)  # update * cand + (1 - update) * h, in one op


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
        if not s.grads:  # no step reached the loss
            return None, None
        g = torch.cat(s.grads)  # (T * B, out); a step whose output did not reach the loss adds nothing
        x = torch.cat(s.inputs)  # (T * B, in)
        s.grads, s.inputs = [], []  # empty again for a second backward through a retained graph
        return g.t() @ x, None  # (out, in)


class _StepLinear(torch.autograd.Function):
    """x @ W.T for one loop step; hands x and the output gradient to the store instead of forming dW."""

    @staticmethod
    def forward(ctx, x, token, store):
        # Saved rather than copied: autograd then checks that x is not changed in place before backward.
        ctx.save_for_backward(x, store.weight)
        ctx.store = store
        return x @ store.weight_t

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.store.inputs.append(x)
        ctx.store.grads.append(grad)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        # No gradient for the token: its backward still runs once every step has passed its own.
        return grad_x, None, None


class _StepStore:
    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # (out, in), detached
        # With few rows, x @ W.T runs at about half the speed of a product with a contiguous (in, out)
        # matrix (MKL on CPU); one transposed copy per loop is cheap next to T products.
        self.weight_t = weight.t().contiguous()  # (in, out)
        self.inputs: list[torch.Tensor] = []  # (B, in) per step, in backward order
        self.grads: list[torch.Tensor] = []  # (B, out) per step, in the same order


class LoopLinear(nn.Linear):
    """A bias-free linear layer applied once per step of a sequential loop.

    Autograd would form a (out x in) weight gradient at every step from B rows, which is memory-bound
    and slow for small B. `bind(steps, rows)` instead returns a per-loop function `step(x, t)` that
    records each step's input and output gradient; the weight gradient is then one (T*B)-row matmul.
    Values and gradients are the same as `F.linear`; outside autograd it is `F.linear`. (`steps`,
    `rows` and `t` describe the loop for the reader; the records grow as steps run, so none is needed.)
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim, bias=False)

    def bind(self, steps: int, rows: int):
        weight = self.weight
        if not (torch.is_grad_enabled() and weight.requires_grad):
            return lambda x, t: F.linear(x, weight)
        store = _StepStore(weight.detach())
        token = _Token.apply(weight, store)
        return lambda x, t: _StepLinear.apply(x, token, store)
