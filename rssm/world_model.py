"""World model: encoders, RSSM, decoders, reward and continue heads, and its loss.

Observations are a dict of keys: vectors (D,) float go through one MLP (symlog inputs, symlog-MSE loss), images
(H, W, C) uint8 through one CNN (inputs obs / 255 - 0.5, MSE on obs / 255 summed over pixels), as in DreamerV3.
Several keys of a kind are concatenated: vectors along their dimension, images along their channels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rssm.config import UserError
from rssm.distributions import categorical_kl, symlog, twohot_bins, twohot_loss, twohot_mean
from rssm.networks import (
    MLP,
    Arch,
    ConvDecoder,
    ConvEncoder,
    PooledConvDecoder,
    PooledConvEncoder,
    image_stages,
    zero_output,
)
from rssm.rssm import RSSM, RSSMState, features


@dataclass(frozen=True)
class LossScales:
    """Weights of the world-model loss terms and the KL free bits (nats per sample)."""

    rec: float = 1.0
    reward: float = 1.0
    cont: float = 1.0
    kl_dyn: float = 0.5
    kl_rep: float = 0.1
    free_bits: float = 1.0
    cont_target: float = 1.0  # the continue head's target at a non-terminal step: 1, or the discount (`contdisc`)


@dataclass(frozen=True)
class Variant:
    """The world model's switches where DreamerV3's 2023 release and its current code differ (defaults: 2023).

    arch: norm and initial weights of every layer (`rssm.networks.Arch`).
    blocks, dyn_layers, prior_layers, learned_initial: the sequence model, prior and initial state (`RSSM`).
    head_layers: hidden layers of the reward and continue heads; None: `layers`, as the other MLPs (2023); 1 now.
    twohot: bins of the reward head (`rssm.distributions.twohot_log_prob`): symlog (2023) or symexp (now).
    cnn: `strided` (2023: `ConvEncoder`, `ConvDecoder`) or `pooled` (now: `PooledConvEncoder`, `PooledConvDecoder`).
    post_joint_init: the posterior's first layer initialised as one layer over concat(h, embed) (now), not as its
        two parts apart (`RSSM`).
    """

    arch: Arch = Arch()
    blocks: int = 0
    dyn_layers: int = 1
    prior_layers: int = 1
    learned_initial: bool = True
    head_layers: int | None = None
    twohot: str = "symlog"
    cnn: str = "strided"
    post_joint_init: bool = False


def kl_loss(post_logits: torch.Tensor, prior_logits: torch.Tensor, dyn_scale: float, rep_scale: float,
            free_bits: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DreamerV3's balanced KL, one value per sample.

    The dynamics term KL(sg(q) || p) trains the prior toward the posterior; the representation term
    KL(q || sg(p)) keeps the posterior predictable. Each is clipped below at `free_bits` after summing
    over G and C, so a sample whose KL is already small sends no gradient.

    Args:
        post_logits, prior_logits: (B, T, G, C).
    Returns:
        Loss (B, T) and metrics with the unclipped KL values and the entropies of both sides.
    """
    # Normalise each side once; the two terms differ only in what they detach.
    post_log = F.log_softmax(post_logits, dim=-1)  # (B, T, G, C)
    prior_log = F.log_softmax(prior_logits, dim=-1)  # (B, T, G, C)
    post_probs = post_log.exp()  # (B, T, G, C)
    dyn = categorical_kl(post_probs.detach(), post_log.detach(), prior_log)  # (B, T)
    rep = categorical_kl(post_probs, post_log, prior_log.detach())  # (B, T)
    dyn_loss = dyn_scale * dyn.clamp(min=free_bits)  # (B, T)
    rep_loss = rep_scale * rep.clamp(min=free_bits)  # (B, T)
    with torch.no_grad():
        metrics = {"loss/kl_dyn": dyn_loss.mean(), "loss/kl_rep": rep_loss.mean(),
                   "wm/dyn_kl": dyn.mean(), "wm/rep_kl": rep.mean(),
                   "wm/prior_entropy": -(prior_log.exp() * prior_log).sum((-2, -1)).mean(),
                   "wm/post_entropy": -(post_probs * post_log).sum((-2, -1)).mean()}
    return dyn_loss + rep_loss, metrics


def select_obs_keys(obs_shapes: Mapping[str, tuple[int, ...]], cnn_keys: str,
                    mlp_keys: str) -> dict[str, tuple[int, ...]]:
    """The observation keys the world model sees: images (H, W, C) whose name matches the regex `cnn_keys`
    and vectors (D,) whose name matches `mlp_keys` (whole-name matches). Other keys are left out.

    Raises:
        UserError: no key is selected, or the images cannot go through one CNN.
    """
    selected = {k: tuple(s) for k, s in obs_shapes.items()
                if re.fullmatch(cnn_keys if len(s) == 3 else mlp_keys, k)}
    if not selected:
        keys = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in obs_shapes.items())
        raise UserError(f"no observation key matches model.cnn_keys='{cnn_keys}' (images) or "
                        f"model.mlp_keys='{mlp_keys}' (vectors); the env has {keys}")
    images = {k: s for k, s in selected.items() if len(s) == 3}
    for k, (h, w, _) in images.items():
        try:
            if h != w:
                raise ValueError("it is not square")
            image_stages(h)
        except ValueError as e:
            raise UserError(f"image '{k}' is {h} x {w}: {e}; pick another env.image_size") from None
    if len({s[:2] for s in images.values()}) > 1:
        raise UserError(f"images {', '.join(images)} differ in size: the CNN stacks them along their channels")
    return selected


class WorldModel(nn.Module):
    """Args:
        obs_shapes: the observation keys to model, each (D,) for a vector or (H, W, C) for an image.
        action_dim: size of the action vector.
        deter, units, layers: GRU size, hidden width and MLP depth.
        groups, classes: shape of the stochastic state.
        unimix: uniform mix of the latent distributions.
        bins: number of two-hot bins of the reward head.
        cnn_depth: channels of the CNN's first stage (doubling with each stage); unused without images.
        variant: the switches where DreamerV3 2023 and now differ (`Variant`).
    """

    def __init__(self, obs_shapes: Mapping[str, tuple[int, ...]], action_dim: int, deter: int, units: int,
                 layers: int, groups: int, classes: int, unimix: float = 0.01, bins: int = 255,
                 cnn_depth: int = 32, variant: Variant = Variant()):
        super().__init__()
        v, arch = variant, variant.arch
        self.twohot = v.twohot
        assert obs_shapes and all(len(s) in (1, 3) for s in obs_shapes.values()), obs_shapes
        self.vector_keys = sorted(k for k, s in obs_shapes.items() if len(s) == 1)
        self.image_keys = sorted(k for k, s in obs_shapes.items() if len(s) == 3)
        self.obs_keys = (*self.image_keys, *self.vector_keys)
        self.vector_dims = [obs_shapes[k][0] for k in self.vector_keys]
        self.image_channels = [obs_shapes[k][2] for k in self.image_keys]
        # Built in the order of the vector-only model (encoder, RSSM, decoder) and under its names, so that a
        # vector model draws the same initial weights and loads its older checkpoints.
        self.encoder = self.decoder = self.image_encoder = self.image_decoder = None
        embed = 0
        if self.vector_keys:
            self.encoder = MLP(sum(self.vector_dims), units, layers, arch=arch)
            embed += self.encoder.out_dim
        if self.image_keys:
            size = obs_shapes[self.image_keys[0]][0]
            encoder = PooledConvEncoder if v.cnn == "pooled" else ConvEncoder
            self.image_encoder = encoder(size, sum(self.image_channels), cnn_depth, arch)
            embed += self.image_encoder.out_dim
        self.rssm = RSSM(action_dim, embed, deter, units, groups, classes, unimix, arch=arch, blocks=v.blocks,
                         dyn_layers=v.dyn_layers, prior_layers=v.prior_layers, learned_initial=v.learned_initial,
                         post_joint_init=v.post_joint_init)
        feat = self.rssm.feat_dim
        if self.vector_keys:
            self.decoder = MLP(feat, units, layers, sum(self.vector_dims), arch)
        if self.image_keys:
            if v.cnn == "pooled":
                self.image_decoder = PooledConvDecoder(deter, feat - deter, size, sum(self.image_channels), cnn_depth,
                                                       units, arch)
            else:
                self.image_decoder = ConvDecoder(feat, size, sum(self.image_channels), cnn_depth, arch)
        head_layers = layers if v.head_layers is None else v.head_layers
        self.reward = MLP(feat, units, head_layers, bins, arch)
        zero_output(self.reward.out)
        self.cont = MLP(feat, units, head_layers, 1, arch)
        self.register_buffer("bins", twohot_bins(bins, v.twohot), persistent=False)

    def predicted_reward(self, feat: torch.Tensor) -> torch.Tensor:
        """The reward head's mean at features (..., F): (...)."""
        return twohot_mean(self.reward(feat), self.bins, self.twohot)

    def compile_images(self, backend: str | Callable) -> None:
        """torch.compile the image encoder and decoder with `backend` (`compile=true`), in place (their parameters'
        names stay). Their channel norms and SiLUs over every pixel are each a pass over memory, which the compiled
        modules fuse: on a CPU the `s` world-model update from 64 x 64 images ran 1.79x as fast with the strided CNN,
        1.11x with the pooled one (its convolutions take most of its time). A module meets several batch sizes
        (training, acting, evaluation): after the first, dynamo compiles one graph with a dynamic batch."""
        for module in (self.image_encoder, self.image_decoder):
            if module is not None:
                module.compile(backend=backend)

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Embed the observation keys of `obs` (other keys are ignored): (B, T, ...) each -> (B, T, E)."""
        parts = []
        if self.image_keys:
            x = self._images(obs)  # (B, T, H, W, C) in [0, 1]
            lead = x.shape[:-3]
            parts.append(self.image_encoder(x.flatten(0, -4) - 0.5).unflatten(0, lead))  # (B, T, E_cnn)
        if self.vector_keys:
            keys = self.vector_keys
            x = obs[keys[0]] if len(keys) == 1 else torch.cat([obs[k] for k in keys], -1)  # (B, T, D)
            parts.append(self.encoder(symlog(x)))  # (B, T, E_mlp)
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # (B, T, E)

    def _images(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The image keys stacked along their channels, scaled from uint8 to [0, 1]: (..., H, W, sum C)."""
        images = [obs[k] for k in self.image_keys]
        return (images[0] if len(images) == 1 else torch.cat(images, -1)).float() / 255.0

    def targets(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the decoder predicts for each key: image / 255, symlog(vector)."""
        out = {k: obs[k].float() / 255.0 for k in self.image_keys}
        out.update({k: symlog(obs[k]) for k in self.vector_keys})
        return out

    def decode(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted observation keys from features (..., F): images in [0, 1] (roughly; not clipped), vectors in
        symlog space, each (..., *shape)."""
        out = {}
        if self.image_keys:
            x = self.image_decoder(feat.flatten(0, -2)).unflatten(0, feat.shape[:-1])  # (..., H, W, C)
            x = x.float() + self.image_decoder.offset  # float32 under autocast too: it feeds the loss
            out.update(zip(self.image_keys, x.split(self.image_channels, -1), strict=True))
        if self.vector_keys:
            x = self.decoder(feat)  # (..., D)
            out.update(zip(self.vector_keys, x.split(self.vector_dims, -1), strict=True))
        return out

    def rec_errors(self, feat: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Squared error of the decoded `feat` (B, T, F) against `obs`, summed over each key's dimensions
        (pixels and channels for images): one (B, T) tensor per key."""
        targets = self.targets(obs)
        return {k: (pred - targets[k]).pow(2).flatten(feat.dim() - 1).sum(-1) for k, pred in self.decode(feat).items()}

    def loss(self, batch: dict[str, torch.Tensor], scales: LossScales,
             state: RSSMState | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], RSSMState]:
        """World-model loss on a batch of sequences.

        Args:
            batch: each observation key (B, T, ...), action (B, T, A), reward (B, T), is_first (B, T),
                is_terminal (B, T).
            scales: loss weights.
            state: RSSM state before the first step, or None.
        Returns:
            Scalar loss, metrics, and the posterior states (B, T, ...).
        """
        reward = batch["reward"]
        B, T = reward.shape
        post, prior_logits = self.rssm.observe(self.encode(batch), batch["action"], batch["is_first"], state)
        feat = features(post)  # (B, T, F)
        rec_keys = self.rec_errors(feat, batch)  # (B, T) per key
        rec = sum(rec_keys.values())  # (B, T)
        reward_logits = self.reward(feat)  # (B, T, K)
        rew = twohot_loss(reward_logits, reward, self.bins, self.twohot)  # (B, T)
        cont_target = (1.0 - batch["is_terminal"].to(feat.dtype)) * scales.cont_target
        cont_logits = self.cont(feat).squeeze(-1)  # (B, T)
        cont = F.binary_cross_entropy_with_logits(cont_logits, cont_target, reduction="none")  # (B, T)
        kl, kl_metrics = kl_loss(post.logits, prior_logits, scales.kl_dyn, scales.kl_rep, scales.free_bits)
        assert rec.shape == rew.shape == cont.shape == kl.shape == (B, T)
        total = scales.rec * rec + scales.reward * rew + scales.cont * cont + kl
        with torch.no_grad():
            metrics = {
                "loss/rec": rec.mean(), "loss/reward": rew.mean(), "loss/cont": cont.mean(),
                **kl_metrics,
                "wm/reward_error": (twohot_mean(reward_logits, self.bins, self.twohot) - reward).abs().mean(),
                "wm/cont_accuracy": ((cont_logits > 0) == (cont_target > 0)).to(feat.dtype).mean(),
            }
            if len(rec_keys) > 1:
                metrics.update({f"loss/rec_{k}": v.mean() for k, v in rec_keys.items()})
        return total.mean(), metrics, post
