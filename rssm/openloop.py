"""Open-loop prediction: how well the world model predicts the future from its prior alone.

The posterior sees the first `context` steps of each sequence; from its last state the prior rolls forward
under the recorded actions, and the decoded states are compared with what was recorded. Horizon k is the
prediction of obs[context + k - 1], made k prior steps after the last observation the model saw:

    recorded:   obs[0] ... obs[c-1]               obs[c]               obs[c+1]   ...
    model:      post   ... post[c-1] -----------> prior_1 -----------> prior_2    ...
                                      action[c]            action[c+1]             (action[t] led to obs[t])
    horizon k:                                    1                    2

`open_loop_video` draws the same prediction for a few sequences: truth | prediction | error, where the prediction
of the context steps is the posterior's reconstruction and from then on the prior's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from rssm.rssm import RSSMState, features
from rssm.world_model import WorldModel


@torch.no_grad()
def predict_open_loop(wm: WorldModel, batch: Mapping[str, torch.Tensor], context: int, horizon: int,
                      reconstruct: bool = False) -> dict:
    """Predictions for steps context : context + horizon from the first `context` observations.

    Args:
        batch: each observation key (B, T, ...) raw; action (B, T, A), action[t] led to obs[t]; is_first (B, T).
        context: observed steps, >= 1; horizon: imagined steps, with context + horizon <= T.
        reconstruct: also decode the posterior states of the context steps (no extra random numbers).
    Returns:
        obs: a dict of the observation keys (B, H, ...) as the decoder predicts them (vectors in symlog space,
        images in [0, 1]); reward (B, H) and the continue probability cont (B, H). The latents of the prior
        rollout are sampled, as in imagination. With `reconstruct` also recon: a dict of the observation keys
        (B, context, ...) decoded from the posterior, which saw them.
    """
    action, is_first = batch["action"], batch["is_first"]
    B, T = is_first.shape
    assert 1 <= context and context + horizon <= T, (context, horizon, T)
    seen = {k: batch[k][:, :context] for k in wm.obs_keys}  # (B, context, ...)
    post, _ = wm.rssm.observe(wm.encode(seen), action[:, :context], is_first[:, :context])
    start = RSSMState(*(x[:, -1] for x in post))  # (B, ...): the state that has seen obs[context - 1]
    imagined, _ = wm.rssm.imagine(start, horizon, actions=action[:, context:context + horizon])
    feat = features(imagined)  # (B, H, F)
    out = {"obs": wm.decode(feat), "reward": wm.predicted_reward(feat),
           "cont": torch.sigmoid(wm.cont(feat).squeeze(-1))}
    if reconstruct:
        out["recon"] = wm.decode(features(post))  # (B, context, ...) per key
    return out


@torch.no_grad()
def open_loop_errors(wm: WorldModel, batch: dict[str, torch.Tensor], context: int = 5,
                     horizons: Sequence[int] = (1, 5, 10, 15),
                     prediction: dict | None = None) -> dict[str, torch.Tensor]:
    """Open-loop prediction errors at each horizon, averaged over the sequences of the batch.

    - obs: squared error summed over the dimensions of each observation key and over the keys, in the space of
      the world model's reconstruction loss (symlog for vectors, [0, 1] for images), but from the prior;
    - reward: absolute error of the two-hot mean;
    - cont: |predicted continue probability - (1 - is_terminal)|.

    A sequence counts at horizon k only if no episode starts in obs[context : context + k]: from an
    `is_first` on, the recorded steps belong to another episode than the one the model was rolled forward
    in, so the prediction has nothing to be compared with. A horizon at which no sequence counts gives NaN.

    Args:
        batch: the observation keys (B, T, ...), action (B, T, A), reward (B, T), is_first (B, T),
            is_terminal (B, T), with T >= context + max(horizons).
        context: steps the posterior sees; horizons: increasing horizons >= 1 to report.
        prediction: `predict_open_loop(wm, batch, context, max(horizons))` if already made, else it is made here.
    Returns:
        Scalar tensors `openloop/{obs,reward,cont}_error_h{k}` for each k in `horizons`; with several
        observation keys also `openloop/obs_{key}_error_h{k}` for each key.
    """
    H = max(horizons)
    pred = predict_open_loop(wm, batch, context, H) if prediction is None else prediction
    assert pred["reward"].shape[1] == H, (pred["reward"].shape, H)
    target = slice(context, context + H)
    truth = wm.targets({k: batch[k][:, target] for k in wm.obs_keys})  # (B, H, ...) per key
    key_errors = {k: (p - truth[k]).pow(2).flatten(2).sum(-1) for k, p in pred["obs"].items()}  # (B, H) per key
    reward_error = (pred["reward"] - batch["reward"][:, target]).abs()  # (B, H)
    cont_error = (pred["cont"] - (1.0 - batch["is_terminal"][:, target].float())).abs()  # (B, H)
    valid = batch["is_first"][:, target].long().cumsum(1) == 0  # (B, H): no episode start up to here
    weight = valid.float() / valid.sum(0)  # (B, H): mean over the valid sequences; 0 / 0 where none is
    named = [("obs", sum(key_errors.values())), ("reward", reward_error), ("cont", cont_error)]
    if len(key_errors) > 1:
        named += [(f"obs_{k}", error) for k, error in key_errors.items()]
    errors = {}
    for name, error in named:
        assert error.shape == valid.shape
        per_step = (error * weight).sum(0)  # (H,)
        errors.update({f"openloop/{name}_error_h{k}": per_step[k - 1] for k in horizons})
    return errors


@torch.no_grad()
def open_loop_video(wm: WorldModel, batch: Mapping[str, torch.Tensor], context: int, horizon: int,
                    sequences: int = 4, key: str | None = None, prediction: dict | None = None) -> np.ndarray:
    """Frames of truth | prediction | error side by side for the first `sequences` sequences, stacked top to bottom.

    The prediction of the first `context` frames is the posterior's reconstruction of what it saw, of the next
    `horizon` frames the prior's open-loop prediction. Predictions are clipped to [0, 1] and drawn as uint8;
    the error is |truth - prediction| of the two panels as drawn (black: right). A sequence that reaches an
    episode start shows the new episode as truth while the prediction goes on with the old one.

    Args:
        batch: as for `predict_open_loop`, the image `key` uint8 (B, T, H, W, C) with T >= context + horizon.
        key: the image key to draw; default the first of `wm.image_keys`.
        prediction: `predict_open_loop(wm, batch, context, >= horizon, reconstruct=True)` if already made.
    Shapes:
        (context + horizon, S * H, 3 * W, C) uint8, S = min(sequences, B): frame t of sequence s is the block
        [t, s * H : (s + 1) * H], truth in the columns 0 : W, prediction W : 2W, error 2W : 3W.
    """
    key = wm.image_keys[0] if key is None else key
    if prediction is None:
        prediction = predict_open_loop(wm, batch, context, horizon, reconstruct=True)
    S = min(sequences, batch[key].shape[0])
    truth = batch[key][:S, :context + horizon]  # (S, T, H, W, C)
    assert truth.dtype == torch.uint8, truth.dtype
    pred = torch.cat([prediction["recon"][key][:S], prediction["obs"][key][:S, :horizon]], 1)  # (S, T, H, W, C)
    pred = (pred.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    error = (truth.int() - pred.int()).abs().to(torch.uint8)  # (S, T, H, W, C)
    panels = torch.cat([truth, pred, error], 3)  # (S, T, H, 3W, C)
    return panels.transpose(0, 1).flatten(1, 2).cpu().numpy()  # (T, S * H, 3W, C)


LABEL_HEIGHT = 14  # rows of the header `label_video` adds: text, then a bar that shows where the context ends


def label_video(video: np.ndarray, context: int) -> np.ndarray:
    """An `open_loop_video` with a header over its three panels, in RGB: "truth", then "seen" over the posterior's
    reconstruction of the context frames and "dream +k" over the prior's k-th prediction, then "error"; under the
    text a bar, green over the context frames and red from the first predicted one.

    Shapes:
        (T, S * H, 3 * W, C) uint8, C = 1 or 3 -> (T, LABEL_HEIGHT + S * H, 3 * W, 3) uint8.
    """
    from PIL import Image, ImageDraw, ImageFont

    T, _, width, C = video.shape
    W = width // 3
    font = ImageFont.load_default()
    rgb = np.repeat(video, 3, -1) if C == 1 else video
    frames = []
    for t in range(T):
        header = Image.new("RGB", (width, LABEL_HEIGHT))
        draw = ImageDraw.Draw(header)
        middle = "seen" if t < context else f"dream +{t - context + 1}"
        for i, text in enumerate(("truth", middle, "error")):
            draw.text((i * W + 2, 0), text, fill=(255, 255, 255), font=font)
        draw.rectangle((0, LABEL_HEIGHT - 2, width, LABEL_HEIGHT), fill=(0, 160, 0) if t < context else (200, 0, 0))
        frames.append(np.concatenate([np.asarray(header), rgb[t]], 0))
    return np.stack(frames)
