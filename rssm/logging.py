"""Metric averaging, TensorBoard output and the terminal progress bar. Only the training loop logs."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


def encode_gif(frames: np.ndarray | Sequence[np.ndarray], fps: float) -> bytes:
    """An animated GIF that loops forever, from frames (T, H, W, C) uint8 with C = 1 (grey) or 3 (rgb).
    Pillow (a dependency of tensorboard) encodes it; a frame equal to the one before is merged into it."""
    from PIL import Image

    images = []
    for frame in frames:
        frame = np.asarray(frame).astype(np.uint8)
        images.append(Image.fromarray(frame[..., 0] if frame.ndim == 3 and frame.shape[-1] == 1 else frame))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


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


class Logger:
    """TensorBoard scalars in the run directory, and a progress bar."""

    def __init__(self, run_dir: Path, total_steps: int, progress: bool, start: int = 0):
        # A resumed run drops the events an interrupted run wrote after its checkpoint (step > start; those at
        # `start` were written before the checkpoint was taken).
        self.writer = SummaryWriter(str(run_dir), purge_step=start + 1 if start else None)
        self.bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True, disable=not progress)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        for k, v in sorted(metrics.items()):
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def videos(self, videos: dict[str, np.ndarray], step: int, fps: float = 10.0) -> None:
        """Each (T, H, W, C) uint8 video as an animated GIF in TensorBoard's images tab. Written as the summary
        `SummaryWriter.add_video` writes, but encoded with Pillow: add_video needs moviepy (1.x) and, without it,
        prints a warning and logs nothing."""
        for tag, frames in sorted(videos.items()):
            T, H, W, C = frames.shape
            image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=encode_gif(frames, fps))
            self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.writer.flush()

    def progress(self, steps: int, **postfix: float | str) -> None:
        self.bar.update(steps - self.bar.n)
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
