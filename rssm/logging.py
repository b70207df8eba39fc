"""Metric averaging, TensorBoard output and the terminal progress bar. Only the training loop logs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class MeanTracker:
    """Accumulates metric values between writes; tensors stay on their device until `means`."""

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
                out[k] = torch.stack([v.float() for v in values]).mean().item()
            else:
                out[k] = float(sum(values) / len(values))
        self._sums.clear()
        return out


class Logger:
    """TensorBoard scalars in the run directory, and a progress bar."""

    def __init__(self, run_dir: Path, total_steps: int, progress: bool, start: int = 0):
        # A resumed run drops the events an interrupted run wrote after its checkpoint (step >= start).
        self.writer = SummaryWriter(str(run_dir), purge_step=start or None)
        self.bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True, disable=not progress)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        for k, v in sorted(metrics.items()):
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def progress(self, steps: int, **postfix: float | str) -> None:
        self.bar.update(steps - self.bar.n)
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
