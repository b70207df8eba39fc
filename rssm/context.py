"""The replay context (`replay.context=1`, DreamerV3's `replay_context`): the model state acting and training
reached at every replayed step, kept in the replay, so that a sampled sequence starts from the state of the step
before it rather than from an episode start.

A window of T + 1 rows is sampled; its first row gives only the state (`start_state`), the other T are the
batch. Acting stores the state after each transition it observed (`stored`); after each update, the posterior
states of the batch's T steps are written back over them (`Replay.write`), so each row holds the state the latest
model reached there. A stored state is h (float32) and z as the index of each categorical's class (int16): z is
one-hot, so the indices hold it exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rssm.rssm import RSSMState

KEYS = ("latent_deter", "latent_stoch")


def stored(state: RSSMState) -> dict[str, np.ndarray]:
    """The fields a replay keeps of `state` (any leading axes ...): latent_deter (..., D) float32, latent_stoch
    (..., G) int16 class indices."""
    return {"latent_deter": state.deter.detach().float().cpu().numpy(),
            "latent_stoch": state.stoch.detach().argmax(-1).to(torch.int16).cpu().numpy()}


def split(batch: dict, context: int) -> tuple[dict, dict]:
    """A window batch (B, context + T, ...) as the batch of its last T steps (the stored states left out) and the
    stored state of the step before them (each (B, ...))."""
    rest = {k: v[:, context:] for k, v in batch.items() if k not in KEYS}  # (B, T, ...)
    start = {k: batch[k][:, context - 1] for k in KEYS}  # (B, ...)
    return rest, start


def start_state(start: dict, classes: int, device: torch.device) -> RSSMState:
    """The model state a `split` start holds, on `device`: h (B, D), z one-hot (B, G, C) (its logits the same
    tensor: nothing reads them before the first step)."""
    deter = torch.as_tensor(start["latent_deter"]).to(device, torch.float32)
    stoch = F.one_hot(torch.as_tensor(start["latent_stoch"]).to(device, torch.int64), classes).float()
    return RSSMState(deter, stoch, stoch)
