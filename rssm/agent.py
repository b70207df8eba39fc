"""The learner: owns the world model's optimizer and turns a replay batch into one update."""

from __future__ import annotations

import numpy as np
import torch

from rssm.world_model import LossScales, WorldModel


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


class Agent:
    """World-model learning. Acting is separate (`rssm.envs.random_action` until a policy is learned).

    Args:
        world_model: the model to train (already on its device).
        scales: loss weights.
        lr, eps, grad_clip: Adam and global gradient-norm clipping.
    """

    def __init__(self, world_model: WorldModel, scales: LossScales, lr: float, eps: float, grad_clip: float):
        self.wm, self.scales, self.grad_clip = world_model, scales, grad_clip
        self.device = next(world_model.parameters()).device
        self.wm_opt = torch.optim.Adam(world_model.parameters(), lr=lr, eps=eps)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One gradient step on a (B, T) batch. Returns detached metric tensors (no device sync)."""
        data = to_torch(batch, self.device)
        loss, metrics, _ = self.wm.loss(data, self.scales)
        self.wm_opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.wm.parameters(), self.grad_clip)
        self.wm_opt.step()
        return {**metrics, "loss/wm": loss.detach(), "grad_norm/wm": grad_norm}
