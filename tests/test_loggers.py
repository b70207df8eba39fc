"""The `logger` config group: TensorBoard, CSV, JSONL, Weights & Biases (offline) and MLflow (a local store)."""

import csv
import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rssm.config import UserError
from rssm.loggers import Csv, Jsonl, make_backends
from rssm.training import train


def test_csv_and_jsonl_keep_the_steps_up_to_a_resumed_run_s_start(tmp_path):
    for kind in (Csv, Jsonl):
        path = tmp_path / f"metrics.{kind.__name__.lower()}"
        backend = kind(path, 0)
        for step in (100, 200, 300):
            backend.scalars({"loss/a": step / 100, "eval/b": float("nan")}, step)
        backend.close()
        resumed = kind(path, 200)  # a checkpoint at step 200: what was written after it is redone
        resumed.scalars({"loss/a": 9.0}, 300)
        resumed.close()
        if kind is Csv:
            rows = list(csv.DictReader(path.open()))
            assert [(r["step"], r["tag"], r["value"]) for r in rows if r["tag"] == "loss/a"] == [
                ("100", "loss/a", "1.0"), ("200", "loss/a", "2.0"), ("300", "loss/a", "9.0")]
        else:
            records = [json.loads(line) for line in path.read_text().splitlines()]
            assert [(r["step"], r["loss/a"]) for r in records] == [(100, 1.0), (200, 2.0), (300, 9.0)]
            assert records[0]["eval/b"] is None  # nan as null: the file stays JSON
        kind(path, 0).close()  # a new run in the same directory starts the file afresh
        assert path.read_text() == ("step,tag,value\n" if kind is Csv else "")


def test_a_run_logs_the_same_scalars_to_every_backend(compose_config, tmp_path):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    cfg = compose_config("env=cartpole", "experiment=debug", "trainer.progress=false",
                         "logger=[tensorboard,csv,jsonl,wandb,mlflow]")
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    want = [(e.step, pytest.approx(e.value)) for e in events.Scalars("eval/return_mean")]
    assert want and "config/text_summary" in events.Tags()["tensors"]  # the composed config as text
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [(int(r["step"]), float(r["value"])) for r in rows if r["tag"] == "eval/return_mean"] == want
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["eval/return_mean"]) for r in records if "eval/return_mean" in r] == want
    client = mlflow.tracking.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/return_mean")] == want
    assert client.get_run(run_id).data.params["env.id"] == "CartPole-v1"
    wandb_id = (run_dir / "wandb" / "rssm_run_id").read_text()
    assert list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb"))


def test_a_resumed_run_logs_to_its_wandb_and_mlflow_runs(compose_config, tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    cfg = compose_config("env=cartpole", "experiment=debug", "logger=[wandb,mlflow]")
    first = make_backends(cfg, tmp_path, 0)
    for backend in first:
        backend.scalars({"loss/a": 1.0}, 100)
        backend.close()
    ids = (tmp_path / "wandb" / "rssm_run_id").read_text(), (tmp_path / "mlflow_run_id").read_text()
    again = make_backends(cfg, tmp_path, 100)
    for backend in again:
        backend.scalars({"loss/a": 2.0}, 200)
    assert again[1].run.info.run_id == ids[1] and again[0].run.id == ids[0]
    for backend in again:
        backend.close()


def test_a_missing_backend_package_names_its_extra(compose_config, tmp_path, monkeypatch):
    cfg = compose_config("env=cartpole", "experiment=debug", "logger=wandb")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"logger=wandb needs the wandb package: pip install 'rssm\[wandb\]'"):
        make_backends(cfg, tmp_path, 0)


def test_the_logger_group_on_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rssm", "env=cartpole", "experiment=debug", "trainer.steps=150",
                          "trainer.progress=false", "logger=[jsonl]", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "metrics.jsonl").is_file() and not list(tmp_path.glob("events.out.tfevents.*"))
    # The status lines are in the run's train.log too, with their times; a refused resume adds nothing there.
    log = (tmp_path / "train.log").read_text()
    assert [line.split("[rssm][INFO] ")[1] for line in log.splitlines()] == out.stdout.splitlines()
    refused = subprocess.run([sys.executable, "-m", "rssm", f"resume={tmp_path}", "trainer.steps=999"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert (tmp_path / "train.log").read_text() == log
    bad = subprocess.run([sys.executable, "-m", "rssm", "logger.wandb.mode=sometimes",
                          f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "logger.wandb.mode must be one of offline, online, disabled" in bad.stderr
    assert bad.stderr.count("\n") == 1
