"""Metric averaging, the run's logger (its backends: rssm/loggers.py) and the terminal progress bar. Only the
training loop logs."""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from rssm.loggers import make_backends


class MeanTracker:
    """Accumulates metric values between writes; tensors stay on their device until `means`, which leaves out
    nan values (the metrics of skipped updates)."""

    def __init__(self):
        self._sums: dict[str, list] = defaultdict(list)

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        for k, v in metrics.items():
            self._sums[k].append(v)

    def means(self) -> dict[str, float]:
        """Means since the last call, then reset."""
        out = {}
        for k, values in self._sums.items():
            if torch.is_tensor(values[0]):
                # nan marks a skipped update's metrics (`Agent.update`): the mean is over the others, nan if none.
                out[k] = torch.stack([v.float() for v in values]).nanmean().item()
            else:
                out[k] = float(sum(values) / len(values))
        self._sums.clear()
        return out

    def totals(self) -> dict[str, tuple[float, int]]:
        """Each metric's sum and count of values since the last `means` (nan values left out), then reset: what
        `merge` combines over the ranks of a data-parallel job."""
        out = {}
        for k, values in self._sums.items():
            v = torch.stack([torch.as_tensor(x).float().cpu() for x in values])  # (values,)
            kept = v[~v.isnan()]
            out[k] = (kept.sum().item(), kept.numel())
        self._sums.clear()
        return out

    @staticmethod
    def merge(totals: list[dict[str, tuple[float, int]]]) -> dict[str, float]:
        """The means of the metrics over several `totals` (nan for a metric with no values)."""
        keys = sorted({k for part in totals for k in part})
        sums = {k: [part[k] for part in totals if k in part] for k in keys}
        return {k: sum(s for s, _ in v) / n if (n := sum(c for _, c in v)) else float("nan") for k, v in sums.items()}

    def state_dict(self) -> dict[str, list]:
        """The values added since the last `means`, in order (tensors on the CPU), for a checkpoint."""
        return {k: [v.detach().cpu() if torch.is_tensor(v) else v for v in values] for k, values in self._sums.items()}

    def load_state_dict(self, state: dict[str, list], device: torch.device | str = "cpu") -> None:
        """Take `state_dict`'s values, tensors onto `device`: `means` then gives what it would have given."""
        self._sums.clear()
        for k, values in state.items():
            self._sums[k] = [v.to(device) if torch.is_tensor(v) else v for v in values]


class Rate:
    """A counter's speed per second over its last `window` to 2 x `window` seconds (over all the time since its
    first reading, until then): live, from the counter alone, whenever it is read."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self._marks: list[tuple[float, int]] = []  # (time, count): where the window starts, then the next start

    def __call__(self, count: int, now: float) -> float:
        if not self._marks:
            self._marks = [(now, count), (now, count)]
        elif now - self._marks[1][0] >= self.window:
            self._marks = [self._marks[1], (now, count)]
        then, before = self._marks[0]
        return (count - before) / (now - then) if now > then else 0.0


# The charts of TensorBoard's CUSTOM SCALARS tab, in its category "rssm": (title, kind, tags), kind Multiline
# (a line per tag) or Margin (a value with a band from a lower to an upper tag). A Margin takes bounds, not a
# spread: the eval return's band is from the lowest to the highest return of its episodes (both logged; its std
# is `eval/return_std`, in the eval/ cards). Tags keep their names: other tools read them.
OVERVIEW = (
    ("eval return: mean, band from min to max of the episodes", "Margin",
     ("eval/return_mean", "eval/return_min", "eval/return_max")),
    ("training episode return", "Multiline", ("episode/return",)),
    ("world-model loss", "Multiline", ("loss/wm",)),
    ("world-model loss parts", "Multiline", ("loss/rec", "loss/reward", "loss/cont", "loss/kl_dyn", "loss/kl_rep")),
    ("updates/s", "Multiline", ("perf/updates_per_s",)),
)


def overview(evaluates: bool) -> dict[str, dict[str, list]]:
    """The layout of `OVERVIEW`'s charts that a run training in an env logs (`Logger.layout`): the eval return's
    only for a run that `evaluates` (one with an actor)."""
    charts = {}
    for title, kind, tags in OVERVIEW:
        if evaluates or not tags[0].startswith("eval/"):
            # Multiline tags are regular expressions: anchored, each names one tag.
            charts[title] = [kind, list(tags) if kind == "Margin" else [f"^{re.escape(t)}$" for t in tags]]
    return {"rssm": charts}


class Logger:
    """The run's metrics to the backends of `cfg.logger` (rssm/loggers.py), and a progress bar: tqdm's count, rate
    and ETA of the steps, and what `progress` adds. A `layout` of charts to show first (`overview`) goes to the
    backends that have such a page (TensorBoard), on a resumed run's start too."""

    def __init__(self, cfg: DictConfig, run_dir: Path, progress: bool, start: int = 0, total: int | None = None,
                 unit: str = "step", layout: dict[str, dict[str, list]] | None = None):
        self.backends = make_backends(cfg, run_dir, start)
        for backend in self.backends if layout else []:
            backend.layout(layout)
        self.bar = tqdm(total=total or cfg.trainer.steps, initial=start, unit=unit, dynamic_ncols=True,
                        disable=not progress)
        self.eval_return = math.nan  # the latest `eval/return_mean` written
        self._updates_per_s, self._shown = Rate(), -math.inf

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self.eval_return = metrics.get("eval/return_mean", self.eval_return)
        for backend in self.backends:
            backend.scalars(metrics, step)

    def videos(self, videos: dict[str, np.ndarray], step: int, fps: float = 10.0) -> None:
        """Each (T, H, W, C) uint8 video, as each backend shows videos (TensorBoard: an animated GIF)."""
        if videos:
            for backend in self.backends:
                backend.videos(videos, step, fps)

    def progress(self, steps: int, updates: int | None = None, train_return: float = math.nan,
                 last: bool = False) -> None:
        """Move the bar to `steps`. With `updates` (the run's count), also show, at most once per refresh of the
        bar (and on the `last` call), the updates per second of the last seconds (before the first update: that
        there is none yet), the latest eval return and `train_return` (the last training episode's)."""
        if updates is not None and not self.bar.disable:
            now = time.monotonic()
            if now - self._shown >= self.bar.mininterval or last:
                self._shown = now
                rate = self._updates_per_s(updates, now)
                shown = [("eval return", self.eval_return), ("train return", train_return)]
                parts = [f"updates/s={rate:.1f}" if updates else "no updates yet"]  # none during the prefill
                parts += [f"{k}={v:.1f}" for k, v in shown if math.isfinite(v)]
                self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update(steps - self.bar.n)

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.close(failing=kind is not None)

    def close(self, failing: bool = False) -> None:
        """Close every backend, then raise the first backend's error, unless the run is `failing` already (its
        own error is the one to report)."""
        self.bar.close()
        errors = []
        for backend in self.backends:
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001 - each backend is closed whatever the others do
                errors.append(e)
        if errors and not failing:
            raise errors[0]
