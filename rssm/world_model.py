"""World model: encoder, RSSM, decoder, reward and continue heads, and its loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rssm.distributions import categorical_kl, symlog, symlog_bins, twohot_loss, twohot_mean
from rssm.networks import MLP, zero_output
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


class WorldModel(nn.Module):
    """Args:
        obs_dim, action_dim: sizes of the observation and action vectors.
        deter, units, layers: GRU size, hidden width and MLP depth.
        groups, classes: shape of the stochastic state.
        unimix: uniform mix of the latent distributions.
        bins: number of two-hot bins of the reward head.
    """

    def __init__(self, obs_dim: int, action_dim: int, deter: int, units: int, layers: int, groups: int,
                 classes: int, unimix: float = 0.01, bins: int = 255):
        super().__init__()
        self.encoder = MLP(obs_dim, units, layers)
        self.rssm = RSSM(action_dim, self.encoder.out_dim, deter, units, groups, classes, unimix)
        feat = self.rssm.feat_dim
        self.decoder = MLP(feat, units, layers, obs_dim)
        self.reward = MLP(feat, units, layers, bins)
        zero_output(self.reward.out)
        self.cont = MLP(feat, units, layers, 1)
        self.register_buffer("bins", symlog_bins(bins), persistent=False)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(symlog(obs))

    def loss(self, batch: dict[str, torch.Tensor], scales: LossScales,
             state: RSSMState | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], RSSMState]:
        """World-model loss on a batch of sequences.

        Args:
            batch: obs (B, T, O), action (B, T, A), reward (B, T), is_first (B, T), is_terminal (B, T).
            scales: loss weights.
            state: RSSM state before the first step, or None.
        Returns:
            Scalar loss, metrics, and the posterior states (B, T, ...).
        """
        obs, reward = batch["obs"], batch["reward"]
        B, T = reward.shape
        post, prior_logits = self.rssm.observe(self.encode(obs), batch["action"], batch["is_first"], state)
        feat = features(post)  # (B, T, F)
        rec = ((self.decoder(feat) - symlog(obs)) ** 2).sum(-1)  # (B, T), squared error in symlog space
        reward_logits = self.reward(feat)  # (B, T, K)
        rew = twohot_loss(reward_logits, reward, self.bins)  # (B, T)
        cont_target = 1.0 - batch["is_terminal"].to(feat.dtype)
        cont_logits = self.cont(feat).squeeze(-1)  # (B, T)
        cont = F.binary_cross_entropy_with_logits(cont_logits, cont_target, reduction="none")  # (B, T)
        kl, kl_metrics = kl_loss(post.logits, prior_logits, scales.kl_dyn, scales.kl_rep, scales.free_bits)
        assert rec.shape == rew.shape == cont.shape == kl.shape == (B, T)
        total = scales.rec * rec + scales.reward * rew + scales.cont * cont + kl
        with torch.no_grad():
            metrics = {
                "loss/rec": rec.mean(), "loss/reward": rew.mean(), "loss/cont": cont.mean(),
                **kl_metrics,
                "wm/reward_error": (twohot_mean(reward_logits, self.bins) - reward).abs().mean(),
                "wm/cont_accuracy": ((cont_logits > 0).to(feat.dtype) == cont_target).to(feat.dtype).mean(),
            }
        return total.mean(), metrics, post
