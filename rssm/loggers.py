"""Where a run's metrics go: the backends of the `logger` config (configs/logger/), several at once.

Each backend takes scalars by env step, videos ((T, H, W, C) uint8), once, the composed config and, where it has
such a thing (TensorBoard's custom-scalars dashboard), a layout of charts for the run's first page. A resumed run
redoes the env steps after its checkpoint: TensorBoard, CSV and JSONL drop what the interrupted run wrote for
them; Weights & Biases keeps the values first logged at a step, MLflow keeps both.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import summary as tb_summary

from rssm.config import UserError, flatten
from rssm.envs import install
from rssm.files import WriteFailed, writing
from rssm.messages import first_line


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """An animated GIF that loops forever, from frames (T, H, W, C) uint8 with C = 1 (grey) or 3 (rgb); a frame
    equal to the one before is merged into it."""
    from PIL import Image

    images = []
    for frame in frames:
        frame = np.asarray(frame).astype(np.uint8)
        images.append(Image.fromarray(frame[..., 0] if frame.ndim == 3 and frame.shape[-1] == 1 else frame))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


class Backend:
    def scalars(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def videos(self, videos: dict[str, np.ndarray], step: int, fps: float) -> None:
        pass

    def layout(self, layout: dict[str, dict[str, list]]) -> None:
        """Charts to show first, as `SummaryWriter.add_custom_scalars` takes them: {category: {title: ["Multiline",
        [tag regex, ...]] or ["Margin", [value, lower, upper]]}}. A backend without such a page ignores it."""

    def close(self) -> None:
        pass


class TensorBoard(Backend):
    """Events in the run directory (`events.out.tfevents.SECONDS.HOST.PID.N`, N counting the directory's event
    files); the config as text (TEXT tab) at a new run's start.

    Written as torch's SummaryWriter writes them, but in this thread: SummaryWriter writes from a thread of its
    own, where a failed write (a full disk) prints a traceback and the run trains on. Here it raises WriteFailed."""

    def __init__(self, run_dir: Path, start: int, config: dict):
        n = len(list(run_dir.glob("events.out.tfevents.*")))
        self.path = run_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{n}"
        with writing(self.path):
            self.file = self.path.open("ab")
        self.records = RecordWriter(self.file)
        # A resumed run drops the events an interrupted run wrote after its checkpoint (step > start; those at
        # `start` were written before the checkpoint was taken): TensorBoard purges them on a session start.
        purge = start + 1 if start else 0
        self._write(Event(wall_time=time.time(), step=purge, file_version="brain.Event:2"))
        if start:
            self._write(Event(wall_time=time.time(), step=purge, session_log=SessionLog(status=SessionLog.START)))
        else:
            self._write(Event(wall_time=time.time(), step=0, summary=tb_summary.text(
                "config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```")))
        self._flush()

    def _write(self, event: Event) -> None:
        with writing(self.path):
            self.records.write(event.SerializeToString())

    def _flush(self) -> None:
        with writing(self.path):
            self.file.flush()

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        for k, v in sorted(metrics.items()):
            self._write(Event(wall_time=time.time(), step=step, summary=tb_summary.scalar(k, v)))
        self._flush()

    def videos(self, videos: dict[str, np.ndarray], step: int, fps: float) -> None:
        """Each video as an animated GIF in the images tab. Written as `SummaryWriter.add_video` writes it, but
        encoded with Pillow: add_video needs moviepy (1.x) and, without it, prints a warning and logs nothing."""
        for tag, frames in sorted(videos.items()):
            T, H, W, C = frames.shape
            image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=encode_gif(frames, fps))
            self._write(Event(wall_time=time.time(), step=step, summary=Summary(value=[Summary.Value(tag=tag,
                                                                                                     image=image)])))
        self._flush()

    def layout(self, layout: dict[str, dict[str, list]]) -> None:
        """The CUSTOM SCALARS tab's layout, at step 0 (as `SummaryWriter.add_custom_scalars` writes it). A resumed
        run writes it again; TensorBoard shows one of the two, which are the same."""
        self._write(Event(wall_time=time.time(), step=0, summary=tb_summary.custom_scalars(layout)))
        self._flush()

    def close(self) -> None:
        with writing(self.path):
            self.file.close()


class _Lines(Backend):
    """A text file of records, one per line after `header` lines; a resumed run keeps those at steps <= start."""

    header = 0

    def __init__(self, path: Path, start: int):
        self.path = path
        with writing(path):
            if start and path.is_file():
                lines = path.read_text().splitlines(keepends=True)
                kept = lines[:self.header] + [line for line in lines[self.header:] if self._step(line) <= start]
                path.write_text("".join(kept))
            elif path.is_file():
                path.unlink()  # a run restarted in its own directory without resume=
            self.file = path.open("a", newline="")

    def _step(self, line: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        with writing(self.path):
            self.file.close()


class Jsonl(_Lines):
    """RUN_DIR/metrics.jsonl: {"step": ..., "time": ..., tag: value, ...} per write (nan as null)."""

    def _step(self, line: str) -> int:
        return int(json.loads(line)["step"])

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        values = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())}
        with writing(self.path):
            self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
            self.file.flush()


class Csv(_Lines):
    """RUN_DIR/metrics.csv: step,tag,value, one row per scalar."""

    header = 1

    def __init__(self, path: Path, start: int):
        super().__init__(path, start)
        self.writer = csv.writer(self.file, lineterminator="\n")
        if self.file.tell() == 0:
            with writing(path):
                self.writer.writerow(["step", "tag", "value"])

    def _step(self, line: str) -> int:
        return int(line.split(",", 1)[0])

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        with writing(self.path):
            self.writer.writerows([step, k, v] for k, v in sorted(metrics.items()))
            self.file.flush()


def _import(name: str, backend: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"logger={backend} needs the {name} package: {install(backend)}") from None


def _run_id(path: Path, make) -> str:
    """The id kept in `path` (a resumed run logs to its own), or a new one from `make()` written there."""
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id := make())
    return run_id


class Wandb(Backend):
    """Weights & Biases, offline by default (RUN_DIR/wandb/offline-run-*, `wandb sync` uploads it)."""

    def __init__(self, run_dir: Path, settings: DictConfig, config: dict):
        wandb = _import("wandb", "wandb")
        self.wandb, self.media = wandb, run_dir / "wandb" / "media"
        run_id = _run_id(run_dir / "wandb" / "rssm_run_id", lambda: uuid.uuid4().hex[:8])
        try:
            self.run = wandb.init(project=settings.project, entity=settings.entity or None, dir=str(run_dir),
                                  mode=settings.mode, id=run_id, resume="allow", name=run_dir.name, config=config,
                                  settings=wandb.Settings(silent=True, console="off", init_timeout=20))
        except Exception as e:  # noqa: BLE001 - wandb's many errors (login, network, settings) are the user's
            raise UserError(f"logger=wandb: {first_line(e, typed=True)}") from None

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def videos(self, videos: dict[str, np.ndarray], step: int, fps: float) -> None:
        self.media.mkdir(parents=True, exist_ok=True)
        logged = {}
        for tag, frames in sorted(videos.items()):
            path = self.media / f"{tag.replace('/', '_')}_{step}.gif"
            path.write_bytes(encode_gif(frames, fps))
            logged[tag] = self.wandb.Video(str(path), format="gif")
        self.run.log(logged, step=step)

    def close(self) -> None:
        self.run.finish()


class Mlflow(Backend):
    """MLflow: one MLflow run per rssm run (a resumed run continues it), in a SQLite store in the run directory
    unless `tracking_uri` names another."""

    def __init__(self, run_dir: Path, settings: DictConfig, config: dict):
        mlflow = _import("mlflow", "mlflow")
        for name in ("mlflow", "alembic"):  # their INFO lines on creating a store
            logging.getLogger(name).setLevel(logging.WARNING)
        self.mlflow, self.run_dir = mlflow, run_dir
        self.uri = uri = settings.tracking_uri or f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
        if uri.startswith(("http://", "https://")):
            # MLflow retries a request for minutes by default, with nothing on the terminal: a server that goes
            # away mid-run stops the run within seconds instead (an environment variable set by the user wins).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            mlflow.set_tracking_uri(uri)
            if not settings.tracking_uri and mlflow.get_experiment_by_name(settings.experiment) is None:
                # The run directory's own store keeps its artifacts beside it (MLflow's default: ./mlruns).
                mlflow.create_experiment(settings.experiment, (run_dir / "mlflow-artifacts").resolve().as_uri())
            mlflow.set_experiment(settings.experiment)
            id_file = run_dir / "mlflow_run_id"
            if id_file.is_file():
                self.run = mlflow.start_run(run_id=id_file.read_text().strip())
            else:
                self.run = mlflow.start_run(run_name=run_dir.name)
                id_file.write_text(self.run.info.run_id)
                params = flatten(config)
                keys = sorted(params)
                for i in range(0, len(keys), 100):  # MLflow takes at most 100 parameters per call
                    mlflow.log_params({k: params[k] for k in keys[i:i + 100]})
                mlflow.log_dict(config, "config.yaml")
        except mlflow.exceptions.MlflowException as e:
            raise UserError(f"logger=mlflow: {first_line(e)}") from None

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        try:
            self.mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)
        except Exception as e:  # noqa: BLE001 - MlflowException, or the HTTP client's errors
            raise WriteFailed(self.uri, first_line(e)) from None

    def videos(self, videos: dict[str, np.ndarray], step: int, fps: float) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for tag, frames in sorted(videos.items()):
                path = Path(tmp) / f"{tag.replace('/', '_')}_{step}.gif"
                path.write_bytes(encode_gif(frames, fps))
                self.mlflow.log_artifact(str(path), "videos")

    def close(self) -> None:
        self.mlflow.end_run()


def check_remote_loggers(cfg: DictConfig) -> None:
    """Before a run writes anything: raise UserError if the MLflow tracking server it logs to cannot be reached
    (a remote logger that cannot be reached fails in one line at the start, not after minutes of retries)."""
    uri = cfg.logger.mlflow.tracking_uri
    if cfg.logger.mlflow.enabled and uri and uri.startswith(("http://", "https://")):
        _reachable(uri, "logger.mlflow.tracking_uri")


def _reachable(uri: str, key: str, timeout: float = 5.0) -> None:
    """Raise UserError unless a TCP connection to `uri`'s host and port opens within `timeout` seconds."""
    parts = urllib.parse.urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"{key}={uri}: cannot reach {parts.hostname}:{port}: "
                        f"{e.strerror or type(e).__name__}") from None


def make_backends(cfg: DictConfig, run_dir: Path, start: int) -> list[Backend]:
    """The backends `cfg.logger` turns on, writing from env step `start` on (0: a new run)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    settings, backends = cfg.logger, []
    if settings.tensorboard:
        backends.append(TensorBoard(run_dir, start, config))
    if settings.csv:
        backends.append(Csv(run_dir / "metrics.csv", start))
    if settings.jsonl:
        backends.append(Jsonl(run_dir / "metrics.jsonl", start))
    if settings.wandb.enabled:
        backends.append(Wandb(run_dir, settings.wandb, config))
    if settings.mlflow.enabled:
        backends.append(Mlflow(run_dir, settings.mlflow, config))
    return backends
