"""Building blocks: MLP, image encoder and decoder, GRU cells, and linear layers for loops.

Nothing here reads a config: every size is an explicit argument. `Arch` holds the two ways of building a layer that
DreamerV3's 2023 release and its current code differ in (its norm and its initial weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-3  # LayerNorm's epsilon (DreamerV3 2023)
RMS_EPS = 1e-4  # RMSNorm's epsilon (DreamerV3 now)
_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


@dataclass(frozen=True)
class Arch:
    """How a layer is built.

    norm: `layer` (DreamerV3 2023): LayerNorm, the linear layer before it without a bias (LayerNorm's shift takes
        its place). `rms` (now): RMSNorm with a scale and no shift, the linear layer before it with a bias.
    fan: initial weights from a normal truncated at 2 std with variance 1 / fan: `avg`, the mean of fan-in and
        fan-out (2023), or `in`, the fan-in (now).
    """

    norm: str = "layer"
    fan: str = "avg"

    @property
    def bias(self) -> bool:
        return self.norm == "rms"


ARCH_2023 = Arch()  # the default of every builder below


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed in its weight's dtype (float32): under autocast its input may come in bfloat16, which torch's
    fused kernel refuses beside a float32 weight (LayerNorm autocast already runs in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


def make_norm(arch: Arch, dim: int) -> nn.Module:
    return RMSNorm(dim, eps=RMS_EPS) if arch.norm == "rms" else nn.LayerNorm(dim, eps=NORM_EPS)


def _fans(weight: torch.Tensor, transposed: bool = False) -> tuple[int, int]:
    """Fan-in and fan-out as DreamerV3 counts them: a (out, in, k, k) kernel has k*k*in and k*k*out; a block
    kernel (G, in, out) counts all G blocks, G*in and G*out."""
    if weight.dim() == 3:  # BlockLinear
        G, i, o = weight.shape
        return G * i, G * o
    field = weight[0][0].numel()
    fan_in, fan_out = weight.shape[1] * field, weight.shape[0] * field
    return (fan_out, fan_in) if transposed else (fan_in, fan_out)


def _draw(weight: torch.Tensor, fan_in: int, fan_out: int, fan: str) -> None:
    """Truncated normal in [-2, 2] std, variance 1 / fan: the mean of fan-in and fan-out (avg) or fan-in (in)."""
    std = math.sqrt(2.0 / (fan_in + fan_out) if fan == "avg" else 1.0 / fan_in) / _TRUNC_STD
    nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def init_weights(module: nn.Module, fan: str = "avg") -> None:
    """Truncated-normal weights with variance 1 / fan (`Arch.fan`) and zero biases, for every dense, block and
    convolution layer in `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, BlockLinear)):
            _draw(m.weight, *_fans(m.weight, isinstance(m, nn.ConvTranspose2d)), fan)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_joint(layers: list[nn.Linear], fan: str = "avg") -> None:
    """Initial weights of dense `layers` that share an output and hold the parts of one layer over their
    concatenated inputs: drawn as that layer's (`init_weights`), with its fan-in, the sum of theirs."""
    fan_in, fan_out = sum(m.weight.shape[1] for m in layers), layers[0].weight.shape[0]
    for m in layers:
        _draw(m.weight, fan_in, fan_out, fan)


def scale_output(layer: nn.Module, scale: float) -> None:
    """Scale an output layer's initial weights (DreamerV3's `outscale`); 0 zeroes it, bias included, so that a
    head starts by predicting 0 (reward and critic heads)."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None and scale == 0.0:
            layer.bias.zero_()


def zero_output(layer: nn.Linear) -> None:
    """Zero an output layer so that a head starts by predicting 0 (reward and critic heads)."""
    scale_output(layer, 0.0)


class BlockLinear(nn.Module):
    """A block-diagonal linear layer: the input (..., G * i) and output (..., G * o) split into G blocks, block g
    of the output a linear function of block g of the input alone (DreamerV3's `BlockLinear`).

    Shapes: (..., G * i) -> (..., G * o); weight (G, i, o).
    """

    def __init__(self, in_dim: int, out_dim: int, blocks: int, bias: bool = True):
        super().__init__()
        assert in_dim % blocks == 0 and out_dim % blocks == 0, (in_dim, out_dim, blocks)
        self.blocks = blocks
        self.weight = nn.Parameter(torch.empty(blocks, in_dim // blocks, out_dim // blocks))
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.blocks, x.shape[-1] // self.blocks).transpose(0, 1)  # (G, N, i)
        y = torch.bmm(x, self.weight).transpose(0, 1).reshape(*lead, -1)  # (G, N, o) -> (..., G * o)
        return y + self.bias if self.bias is not None else y


class MLP(nn.Module):
    """`layers` x (Linear -> norm -> SiLU), then an optional linear output layer whose initial weights are
    scaled by `outscale` (0: a head that starts at 0)."""

    def __init__(self, in_dim: int, units: int, layers: int, out_dim: int | None = None, arch: Arch = ARCH_2023,
                 outscale: float = 1.0):
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(in_dim if i == 0 else units, units, bias=arch.bias), make_norm(arch, units), nn.SiLU()]
        self.hidden = nn.Sequential(*blocks)
        last = units if layers > 0 else in_dim
        self.out = nn.Linear(last, out_dim) if out_dim is not None else None
        self.out_dim = out_dim if out_dim is not None else last
        init_weights(self, arch.fan)
        if self.out is not None and outscale != 1.0:
            scale_output(self.out, outscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Rows as one matrix: a strided slice of a sequence (feat[:, 1:]) would be multiplied one batch row at a
        # time against a broadcast weight, where one copy of it makes every layer a single product.
        lead = x.shape[:-1]
        x = self.hidden(x.reshape(-1, x.shape[-1]))  # (..., in) -> (N, units)
        if self.out is not None:
            # An output layer's result in float32 even under autocast: heads feed distributions and losses.
            x = wide_linear(x, self.out.weight, self.out.bias).float()  # (N, out)
        return x.reshape(*lead, x.shape[-1])  # (..., out)


def wide_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` for a layer of 64 or more outputs, computed with the outputs padded by zero rows to a multiple of
    8 and cut back: matrix products run at about half the rate with an odd number of columns (on one CPU thread,
    16,384 x 128 times 128 x 255 took 23 ms, times 128 x 256 13 ms: the two-hot heads' 255 bins), and GPUs' tensor
    cores want multiples of 8. Values and gradients are those of `F.linear`; the result is a view."""
    out = weight.shape[0]
    pad = -out % 8
    if out < 64 or pad == 0:
        return F.linear(x, weight, bias)
    bias = F.pad(bias, (0, pad)) if bias is not None else None
    return F.linear(x, F.pad(weight, (0, 0, 0, pad)), bias)[..., :out]


def image_stages(size: int) -> int:
    """Stride-2 stages that halve a square image's side `size` to a side of 4 to 7 pixels (64 -> 4: four).

    Raises ValueError for a side that is not 4 to 7 times a power of two (at least 8).
    """
    stages = 0
    while size >= 8 and size % 2 == 0:
        size, stages = size // 2, stages + 1
    if stages == 0 or size >= 8:
        raise ValueError("the side must be 4 to 7 times a power of two, at least 8 (e.g. 16, 64, 96)")
    return stages


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel: (N, C, H, W) -> (N, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelRMSNorm(RMSNorm):
    """RMSNorm over the channels of each pixel: (N, C, H, W) -> (N, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def channel_norm(arch: Arch, channels: int) -> nn.Module:
    return ChannelRMSNorm(channels, eps=RMS_EPS) if arch.norm == "rms" else ChannelNorm(channels, eps=NORM_EPS)


class ConvEncoder(nn.Module):
    """DreamerV3's image encoder: stages of Conv(4x4, stride 2) -> channel LayerNorm -> SiLU, each halving the
    side (64 -> 32 -> 16 -> 8 -> 4) while the channels double from `depth`; the last stage is flattened.

    Args:
        size: side of the square input; channels: its channels C; depth: channels of the first stage.
    Shapes:
        (N, H, W, C) float, centred on 0 -> (N, out_dim), out_dim = channels of the last stage x its pixels.
    """

    def __init__(self, size: int, channels: int, depth: int, arch: Arch = ARCH_2023):
        super().__init__()
        stages = image_stages(size)
        blocks: list[nn.Module] = []
        width = channels
        for i in range(stages):
            blocks += [nn.Conv2d(width, depth * 2**i, 4, 2, 1, bias=arch.bias), channel_norm(arch, depth * 2**i),
                       nn.SiLU()]
            width = depth * 2**i
        self.net = nn.Sequential(*blocks)
        self.out_dim = width * (size >> stages) ** 2
        init_weights(self, arch.fan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).flatten(1)  # (N, C, H, W) -> (N, C' * h * w)


class ConvDecoder(nn.Module):
    """The encoder mirrored: a linear layer to the last stage's (C', h, w), then stages of
    ConvTranspose(4x4, stride 2) -> channel LayerNorm -> SiLU doubling the side, the last one a plain
    transposed convolution to `channels`.

    Shapes:
        (N, in_dim) -> (N, H, W, C), unbounded, centred on 0 (the world model adds `offset`).
    """

    offset = 0.5  # of the images in [0, 1] it predicts

    def __init__(self, in_dim: int, size: int, channels: int, depth: int, arch: Arch = ARCH_2023):
        super().__init__()
        stages = image_stages(size)
        self.top = (depth * 2 ** (stages - 1), size >> stages, size >> stages)  # (C', h, w)
        self.linear = nn.Linear(in_dim, math.prod(self.top))
        blocks: list[nn.Module] = []
        for i in reversed(range(1, stages)):
            blocks += [nn.ConvTranspose2d(depth * 2**i, depth * 2 ** (i - 1), 4, 2, 1, bias=arch.bias),
                       channel_norm(arch, depth * 2 ** (i - 1)), nn.SiLU()]
        blocks.append(nn.ConvTranspose2d(depth, channels, 4, 2, 1))
        self.net = nn.Sequential(*blocks)
        init_weights(self, arch.fan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x).unflatten(-1, self.top)  # (N, C', h, w)
        return self.net(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)


POOLED_MULTS = (2, 3, 4, 4)  # channels of the pooled CNN's stages, times its depth (a fifth stage repeats 4)


def _pooled_channels(depth: int, stages: int) -> list[int]:
    return [depth * POOLED_MULTS[min(i, len(POOLED_MULTS) - 1)] for i in range(stages)]


class PooledConvEncoder(nn.Module):
    """Today's DreamerV3 image encoder: stages of Conv(5x5, stride 1) -> 2x2 max-pool -> channel norm -> SiLU, each
    halving the side (64 -> 32 -> 16 -> 8 -> 4), with 2, 3, 4, 4 times `depth` channels; the last is flattened.

    Shapes:
        (N, H, W, C) float, centred on 0 -> (N, out_dim).
    """

    def __init__(self, size: int, channels: int, depth: int, arch: Arch = ARCH_2023):
        super().__init__()
        stages = image_stages(size)
        blocks: list[nn.Module] = []
        width = channels
        for out in _pooled_channels(depth, stages):
            blocks += [nn.Conv2d(width, out, 5, 1, 2), nn.MaxPool2d(2), channel_norm(arch, out), nn.SiLU()]
            width = out
        self.net = nn.Sequential(*blocks)
        self.out_dim = width * (size >> stages) ** 2
        init_weights(self, arch.fan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).flatten(1)  # (N, C, H, W) -> (N, C' * h * w)


class PooledConvDecoder(nn.Module):
    """Today's DreamerV3 image decoder. The last stage's (C', h, w) grid is the sum of a block-diagonal layer of
    h (`blocks` groups, each filling C' / blocks channels of every pixel) and an MLP of z (Linear 2 x units -> norm
    -> SiLU -> Linear), normed and through SiLU; then stages of 2x nearest upsampling -> Conv(5x5) -> channel norm
    -> SiLU, and a last upsampling and Conv(5x5) to `channels` through a sigmoid. (DreamerV3 uses 8 groups; here
    fewer where h's size or C' is not a multiple of 8.)

    Shapes:
        (N, deter + stoch) features [h, z] -> (N, H, W, C) in (0, 1).
    """

    offset = 0.0

    def __init__(self, deter: int, stoch: int, size: int, channels: int, depth: int, units: int,
                 arch: Arch = ARCH_2023, blocks: int = 8):
        super().__init__()
        stages = image_stages(size)
        widths = _pooled_channels(depth, stages)
        side = size >> stages
        blocks = math.gcd(blocks, deter, widths[-1])  # fewer where h or C' does not split into `blocks`
        self.deter, self.blocks, self.top = deter, blocks, (widths[-1], side, side)  # (C', h, w)
        self.space_h = BlockLinear(deter, math.prod(self.top), blocks)
        self.space_z = nn.Sequential(nn.Linear(stoch, 2 * units, bias=arch.bias), make_norm(arch, 2 * units),
                                     nn.SiLU(), nn.Linear(2 * units, math.prod(self.top)))
        self.space_norm = channel_norm(arch, widths[-1])
        stack: list[nn.Module] = []
        for i in reversed(range(stages - 1)):
            stack += [nn.Upsample(scale_factor=2), nn.Conv2d(widths[i + 1], widths[i], 5, 1, 2),
                      channel_norm(arch, widths[i]), nn.SiLU()]
        stack += [nn.Upsample(scale_factor=2), nn.Conv2d(widths[0], channels, 5, 1, 2), nn.Sigmoid()]
        self.net = nn.Sequential(*stack)
        init_weights(self, arch.fan)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        C, h, w = self.top
        G, N = self.blocks, feat.shape[0]
        x_h = self.space_h(feat[:, :self.deter]).view(N, G, h, w, C // G)  # each group's (h, w, C / G) piece
        x_h = x_h.permute(0, 1, 4, 2, 3).reshape(N, C, h, w)  # channel g * C / G + c
        x_z = self.space_z(feat[:, self.deter:]).view(N, h, w, C).permute(0, 3, 1, 2)  # (N, C', h, w)
        x = F.silu(self.space_norm(x_h + x_z))
        return self.net(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) as 2 * sigmoid(2x) - 1: the same function (to float32's rounding near 0), in about a third of the
    time of torch.tanh on a CPU (1024 x 128 on one thread: 400 against 130 microseconds)."""
    return 2.0 * torch.sigmoid(2.0 * x) - 1.0


def gru_update(gates: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """DreamerV3's GRU given gate pre-activations (B, 3D), laid out as [reset, candidate, update], and the
    previous state (B, D)."""
    reset, cand, update = gates.chunk(3, dim=-1)
    return gru_gates(reset, cand, update, h)


def gru_gates(reset: torch.Tensor, cand: torch.Tensor, update: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The GRU's new state from its three gate pre-activations and the previous state h, each (B, D). The state
    keeps h's dtype (float32) when the gates come from a lower-precision product under autocast."""
    reset, cand, update = (x.to(h.dtype) for x in (reset, cand, update))
    cand = tanh(torch.sigmoid(reset) * cand)
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
        x = x.to(store.weight.dtype)  # the loop's dtype (`LoopLinear.bind`)
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
        return bind_loop_weight(self.weight, steps, rows)


def bind_loop_weight(weight: torch.Tensor, steps: int, rows: int):
    """`LoopLinear.bind` for any (out, in) weight, a parameter or a tensor formed from one (a slice of a larger
    layer): the per-loop function `step(x, t)` = x @ weight.T whose weight gradient is one (T*B)-row product."""
    # Under torch.compile the compiler forms the weight gradient itself; the store's bookkeeping in backward
    # is Python it cannot trace.
    if not (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
        return lambda x, t: F.linear(x, weight)
    # Under autocast the steps multiply in its dtype, as F.linear would: the weight is cast once per loop.
    device = weight.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    store = _StepStore(weight.detach().to(dtype))
    token = _Token.apply(weight, store)
    return lambda x, t: _StepLinear.apply(x, token, store)
