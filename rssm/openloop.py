"""Open-loop prediction: how well the world model predicts the future from its prior alone.

The posterior sees the first `context` steps of each sequence; from its last state the prior rolls forward
under the recorded actions, and the decoded states are compared with what was recorded. Horizon k is the
prediction of obs[context + k - 1], made k prior steps after the last observation the model saw:

    recorded:   obs[0] ... obs[c-1]               obs[c]               obs[c+1]   ...
    model:      post   ... post[c-1] -----------> prior_1 -----------> prior_2    ...
                                      action[c]            action[c+1]             (action[t] led to obs[t])
    horizon k:                                    1                    2

`sequence_errors` measures each prediction, `scored` says which count (none from an episode start on),
`open_loop_errors` averages those; `baseline_errors` measures predictions without a model in the same way (the
last observation seen, predicted again), to read the model's errors against.

`open_loop_video` draws the same prediction for a few sequences: truth | prediction | error, where the prediction
of the context steps is the posterior's reconstruction and from then on the prior's; `open_loop_curves` gives it
for vectors, each dimension with the reward and the continue flag, as curves over time (`rssm-dream` draws them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from rssm.distributions import symexp
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
        (B, context, ...) decoded from the posterior, which saw them, and its recon_reward and recon_cont
        (B, context).
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
        seen_feat = features(post)  # (B, context, F)
        out.update(recon=wm.decode(seen_feat), recon_reward=wm.predicted_reward(seen_feat),  # (B, context, ...)
                   recon_cont=torch.sigmoid(wm.cont(seen_feat).squeeze(-1)))
    return out


def scored(is_first: torch.Tensor, context: int, horizon: int) -> torch.Tensor:
    """Which predictions have a recorded step to be compared with: sequence b at horizon k if no episode starts in
    obs[context : context + k]. From an `is_first` on, the recorded steps belong to another episode than the one
    the model was rolled forward in (an episode start inside the context only resets the posterior).

    Shapes:
        is_first (B, T) with T >= context + horizon -> (B, horizon) bool.
    """
    return is_first[:, context:context + horizon].long().cumsum(1) == 0


def _obs_errors(pred: Mapping[str, torch.Tensor], truth: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The obs error of each observation key (B, H): squared error summed over its dimensions, for `pred` and
    `truth` each (B, H, ...) in the space of the reconstruction loss (`WorldModel.targets`)."""
    return {k: (p - truth[k]).pow(2).flatten(2).sum(-1) for k, p in pred.items()}


def _named(key_errors: dict[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
    """`obs{suffix}`, the keys' errors summed, and with several keys also `obs_{key}{suffix}` for each."""
    named = {f"obs{suffix}": sum(key_errors.values())}
    if len(key_errors) > 1:
        named.update({f"obs_{k}{suffix}": error for k, error in key_errors.items()})
    return named


@torch.no_grad()
def sequence_errors(wm: WorldModel, batch: Mapping[str, torch.Tensor], context: int, horizon: int,
                    prediction: dict | None = None) -> dict[str, torch.Tensor]:
    """The open-loop errors of each sequence at each horizon 1..`horizon`, whether it counts or not (`scored`).

    - obs: squared error summed over the dimensions of each observation key and over the keys, in the space of
      the world model's reconstruction loss (symlog for vectors, [0, 1] for images), but from the prior;
    - reward: absolute error of the two-hot mean;
    - cont: |predicted continue probability - (1 - is_terminal)|.

    Args:
        batch: as for `open_loop_errors`, with T >= context + horizon.
        prediction: `predict_open_loop(wm, batch, context, horizon)` if already made, else it is made here.
    Returns:
        `obs_error`, `reward_error`, `cont_error`, and with several observation keys `obs_{key}_error` for each,
        each (B, horizon): column k - 1 is horizon k.
    """
    pred = predict_open_loop(wm, batch, context, horizon) if prediction is None else prediction
    assert pred["reward"].shape[1] == horizon, (pred["reward"].shape, horizon)
    target = slice(context, context + horizon)
    truth = wm.targets({k: batch[k][:, target] for k in wm.obs_keys})  # (B, H, ...) per key
    errors = _named(_obs_errors(pred["obs"], truth), "_error")  # (B, H) each
    errors["reward_error"] = (pred["reward"] - batch["reward"][:, target]).abs()  # (B, H)
    errors["cont_error"] = (pred["cont"] - (1.0 - batch["is_terminal"][:, target].float())).abs()  # (B, H)
    return errors


@torch.no_grad()
def baseline_errors(wm: WorldModel, batch: Mapping[str, torch.Tensor], context: int,
                    horizon: int) -> dict[str, torch.Tensor]:
    """The errors of two predictions that need no model, per sequence and horizon, measured as `sequence_errors`
    measures the model's:

    - obs_error_last_seen: the last observation of the context, obs[context - 1], predicted again at every step;
    - reward_error_context_mean: the mean reward of the steps the context saw taken in the episode being predicted
      (reward[t] for the t in 1..context - 1 after the last episode start in the context; 0 where there is none),
      predicted at every step.

    Args:
        batch: as for `open_loop_errors`, with T >= context + horizon and context >= 1.
    Returns:
        `obs_error_last_seen`, `reward_error_context_mean`, and with several observation keys
        `obs_{key}_error_last_seen` for each, each (B, horizon): column k - 1 is horizon k.
    """
    B, T = batch["is_first"].shape
    assert 1 <= context and context + horizon <= T, (context, horizon, T)
    seen = wm.targets({k: batch[k][:, context - 1:context + horizon] for k in wm.obs_keys})  # (B, 1 + H, ...)
    last = {k: v[:, :1].expand_as(v[:, 1:]) for k, v in seen.items()}  # (B, H, ...): obs[context - 1] repeated
    errors = _named(_obs_errors(last, {k: v[:, 1:] for k, v in seen.items()}), "_error_last_seen")
    starts = batch["is_first"][:, :context].long()  # (B, context)
    starts[:, 0] = 1  # reward[0] is of a step before the sequence, or of none
    since = starts.flip(1).cumsum(1).flip(1) == 0  # (B, context): the rows after the last episode start
    steps = since.sum(1)  # (B,)
    mean = (batch["reward"][:, :context] * since).sum(1) / steps.clamp(min=1)  # (B,), 0 without steps
    errors["reward_error_context_mean"] = (mean[:, None] - batch["reward"][:, context:context + horizon]).abs()
    return errors


@torch.no_grad()
def open_loop_errors(wm: WorldModel, batch: dict[str, torch.Tensor], context: int = 5,
                     horizons: Sequence[int] = (1, 5, 10, 15),
                     prediction: dict | None = None) -> dict[str, torch.Tensor]:
    """Open-loop prediction errors at each horizon (`sequence_errors`), averaged over the sequences of the batch
    that count there (`scored`). A horizon at which no sequence counts gives NaN.

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
    valid = scored(batch["is_first"], context, H)  # (B, H)
    weight = valid.float() / valid.sum(0)  # (B, H): mean over the valid sequences; 0 / 0 where none is
    errors = {}
    for name, error in sequence_errors(wm, batch, context, H, prediction).items():
        assert error.shape == valid.shape
        per_step = (error * weight).sum(0)  # (H,)
        errors.update({f"openloop/{name}_h{k}": per_step[k - 1] for k in horizons})
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


@torch.no_grad()
def open_loop_curves(wm: WorldModel, batch: Mapping[str, torch.Tensor], context: int, horizon: int,
                     sequences: int = 4, keys: Sequence[str] | None = None, cont_scale: float = 1.0,
                     prediction: dict | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Truth and prediction over time of each dimension of the vector keys, the reward and the continue flag, for
    the first `sequences` sequences, in the env's units: the posterior's reconstruction over the first `context`
    steps, then the prior's open-loop prediction over the next `horizon`.

    Args:
        batch: as for `open_loop_errors`, with T >= context + horizon.
        keys: the vector keys to draw; default all of `wm.vector_keys`.
        cont_scale: what the continue head learns for a step the episode goes on from
            (`rssm.build.continue_target`): its output over this is P(continue), against the truth 1 - is_terminal.
        prediction: `predict_open_loop(wm, batch, context, >= horizon, reconstruct=True)` if already made.
    Returns:
        The names of the N = D + 2 rows (`key[i]` for each of the D dimensions, then "reward" and "continue"), and
        the truth and the prediction, each (S, N, context + horizon) float32 with S = min(sequences, B).
    """
    keys = wm.vector_keys if keys is None else list(keys)
    if prediction is None:
        prediction = predict_open_loop(wm, batch, context, horizon, reconstruct=True)
    S, T = min(sequences, batch["is_first"].shape[0]), context + horizon

    def joined(seen: torch.Tensor, dreamt: torch.Tensor) -> torch.Tensor:  # (S, T, ...) from (B, context | H', ...)
        return torch.cat([seen[:S], dreamt[:S, :horizon]], 1)

    truth = [batch[k][:S, :T].float() for k in keys]  # each (S, T, D_k)
    pred = [symexp(joined(prediction["recon"][k], prediction["obs"][k])) for k in keys]  # decoded in symlog space
    truth += [batch["reward"][:S, :T, None].float(), 1.0 - batch["is_terminal"][:S, :T, None].float()]
    pred += [joined(prediction["recon_reward"], prediction["reward"])[..., None],
             (joined(prediction["recon_cont"], prediction["cont"]) / cont_scale).clamp(0.0, 1.0)[..., None]]
    names = [f"{k}[{i}]" for k in keys for i in range(batch[k].shape[-1])] + ["reward", "continue"]
    truth, pred = (torch.cat(x, -1).transpose(1, 2).cpu().numpy() for x in (truth, pred))  # (S, N, T) each
    return names, truth, pred


LABEL_HEIGHT = 14  # rows of `label_video`'s header over panels 20 pixels wide or more: text, then a 2-row bar
NARROW_LABEL_HEIGHT = 20  # over narrower ones: two lines of text (the middle label on the second), then the bar
LABEL_SIZES = (10, 9, 8, 7)  # font sizes in pixels, the largest at which the labels fit is used
LABEL_GAP = 2  # dark columns at least between a label and the next panel's on the same line


class Header(NamedTuple):
    """How `label_video` labels panels of a width: the font size, the header's rows, its lines of text (1: the
    three labels side by side; 2: the middle one under the others) and each frame's labels, left to right."""

    size: int
    height: int
    lines: int
    labels: list[tuple[str, str, str]]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError, ImportError):  # Pillow before 10.1, or without FreeType: its one bitmap font
        return ImageFont.load_default()


def _label_left(width: int) -> int:
    """Where a label starts in its panel: two pixels in, or at the edge of a narrow one."""
    return 2 if width >= 32 else 0


def header_layout(width: int, context: int, frames: int) -> Header:
    """The header of `label_video` over panels `width` pixels wide, for `frames` frames of which the first
    `context` were seen: "truth", "seen" or "dream +k" (the prior's k-th prediction), "error". On one line at the
    largest size of `LABEL_SIZES` at which each label ends `LABEL_GAP` columns before its panel does ("+k" where
    "dream +k" would not); where none does (panels under 20 pixels), the middle label goes on a second line, each
    label within its panel at the smallest size (16 pixels: all fit); cut at the panel's edge where one cannot."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h = frames - context  # the last prediction's k: its label is the widest

    def fits(text: str, size: int, gap: int) -> bool:
        return draw.textbbox((_label_left(width), 0), text, font=_font(size))[2] <= width - gap

    def labels(dream: str) -> list[tuple[str, str, str]]:
        return [("truth", "seen" if t < context else dream.format(t - context + 1), "error") for t in range(frames)]

    for size in LABEL_SIZES:
        dream = "dream +{}" if fits(f"dream +{h}", size, LABEL_GAP) else "+{}"
        if all(fits(text, size, LABEL_GAP) for text in ("truth", "seen", dream.format(h), "error")):
            return Header(size, LABEL_HEIGHT, 1, labels(dream))
    return Header(LABEL_SIZES[-1], NARROW_LABEL_HEIGHT, 2, labels("+{}"))


def label_video(video: np.ndarray, context: int) -> np.ndarray:
    """An `open_loop_video` with a header over its three panels, in RGB: "truth", then "seen" over the posterior's
    reconstruction of the context frames and "dream +k" over the prior's k-th prediction, then "error"; under the
    text a bar, green over the context frames and red from the first predicted one. Over narrow panels the font is
    smaller, "dream +k" is "+k", and under 20 pixels the middle label has a line of its own (`header_layout`).

    Shapes:
        (T, S * H, 3 * W, C) uint8, C = 1 or 3 -> (T, R + S * H, 3 * W, 3) uint8 with R = `header_layout(W, context,
        T).height`: `LABEL_HEIGHT`, or `NARROW_LABEL_HEIGHT` under panels narrower than 20 pixels.
    """
    from PIL import Image, ImageDraw

    T, _, width, C = video.shape
    W = width // 3
    header = header_layout(W, context, T)
    font, line = _font(header.size), (header.height - 2) // header.lines  # rows of each line of text
    top = (LABEL_SIZES[0] - header.size) // 2 if header.lines == 1 else 0  # a smaller font in the middle of its line
    rgb = np.repeat(video, 3, -1) if C == 1 else video
    frames = []
    for t in range(T):
        image = Image.new("RGB", (width, header.height))
        for i, text in enumerate(header.labels[t]):
            panel = Image.new("RGB", (W, line))  # drawn apart: a label never reaches into the next panel
            ImageDraw.Draw(panel).text((_label_left(W), top), text, fill=(255, 255, 255), font=font)
            image.paste(panel, (i * W, line if header.lines == 2 and i == 1 else 0))
        ImageDraw.Draw(image).rectangle((0, header.height - 2, width, header.height),
                                        fill=(0, 160, 0) if t < context else (200, 0, 0))
        frames.append(np.concatenate([np.asarray(image), rgb[t]], 0))
    return np.stack(frames)
