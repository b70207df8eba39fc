"""Bad input is refused in one line (status 2), never a traceback: configs, run directories, damaged runs,
envs that cannot be made, memory the run cannot have, and the flags and devices of every command. A refusal
leaves the file system as it found it."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import DEBUG, RUN, copy_run, hashes, one_line, refused

import rssm.evaluate
from rssm.checkpoint import CHECKPOINT
from rssm.config import UserError
from rssm.training import train


# Configs under which the run cannot work, or would train nothing and exit 0.
@pytest.mark.parametrize("override, message", [
    ("trainer.eval_episodes=0", "trainer.eval_episodes must be > 0, got 0"),
    ("wm.lr=inf", "wm.lr must be a finite float32 number, got inf"),
    ("agent.gamma=nan", "agent.gamma must be a finite float32 number, got nan"),
    ("trainer.train_ratio=inf", "trainer.train_ratio must be a finite float32 number, got inf"),
    ("trainer.stop_return=-inf", "trainer.stop_return must be a finite float32 number, got -inf"),
    ("wm.lr=1e300", "wm.lr must be a finite float32 number, got 1e+300"),  # torch.optim raised on it
    ("trainer.train_ratio=0", "trainer.train_ratio must be > 0, got 0"),
    ("trainer.train_ratio=0.1", "trainer.train_ratio=0.1 makes 0.625 updates due in the 200 env steps after"),
    ("replay.capacity=7", "the replay holds 7 steps per env (replay.capacity / env.num_envs), fewer than one "
                           "sequence of replay.batch_length=8"),
    ("trainer.prefill=300", "trainer.prefill (300) must be below trainer.steps (300)"),
    ("trainer.steps=14", "trainer.steps (14) gives each of the 2 envs fewer steps than one sequence"),
    ("+trainer.speed=3", "unknown config key 'trainer.speed'"),
    ("trainer.steps=${oops}", "trainer.steps: cannot resolve the config: Interpolation key 'oops' not found"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("model.bins=1", "model.bins must be >= 2 (two-hot needs two bins), got 1"),
])
def test_configs_that_cannot_train_are_refused(compose_config, finished, tmp_path, override, message):
    extra = ("env.num_envs=2", "trainer.prefill=0", "replay.chunk=4") if "trainer.steps=14" in override else ()
    run_dir = copy_run(finished, tmp_path / "run")
    refused(compose_config(*DEBUG, *extra, override), run_dir, message, run_dir)
    refused(compose_config(*DEBUG, *extra, override, f"resume={run_dir}"), run_dir, message, run_dir)


def test_run_directories_that_cannot_be_used(compose_config, tmp_path, finished):
    cfg = compose_config(*RUN)
    a_file = tmp_path / "file"
    a_file.write_text("notes")
    refused(cfg, a_file, f"run directory {a_file} is a file", tmp_path)
    refused(cfg, a_file / "run", f"run directory {a_file / 'run'} lies under {a_file}, which is a file", tmp_path)
    run_dir = copy_run(finished, tmp_path / "run")
    refused(cfg, run_dir, f"{run_dir} already holds a run: continue it with rssm-train resume={run_dir}", run_dir)
    refused(compose_config(*RUN, f"resume={tmp_path / 'nowhere'}"), run_dir, f"no checkpoint at {tmp_path / 'nowhere'}",
            run_dir)
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_holding_a_model_without_its_checkpoint_is_refused(compose_config, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    (run_dir / CHECKPOINT).unlink()
    refused(compose_config(*RUN), run_dir, f"{run_dir} already holds a run's model.pt (without its checkpoint.pt, so "
                                           f"the run cannot be continued): pick another dir", run_dir)


@pytest.mark.parametrize("name", ["plain-run", "a b,c=[d]'e\"f", "x$y\\"])
def test_the_printed_resume_command_works_when_pasted(compose_config, finished, tmp_path, cli_environ, name):
    run_dir = copy_run(finished, tmp_path / name)
    with pytest.raises(UserError) as e:
        train(compose_config(*RUN), run_dir)
    command = re.fullmatch(r".* already holds a run: continue it with (.*) or pick another dir", str(e.value))[1]
    if name == "plain-run":
        assert command == f"rssm-train resume={run_dir}"
    # A finished run: resuming it trains nothing, and ends well only if the path came through whole.
    pasted = command.replace("rssm-train", f"{shlex.quote(sys.executable)} -m rssm", 1)
    proc = subprocess.run(["bash", "-c", f"{pasted} trainer.progress=false"], capture_output=True, text=True,
                          env=cli_environ, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"rssm: resumed from {run_dir / CHECKPOINT} at env step 200" in proc.stdout


@pytest.mark.parametrize("damage, message", [
    ("truncated", "the file is truncated or damaged"),
    ("code", "it holds objects other than tensors and plain data, and loading them could run code, so it is refused"),
    ("chunk", "cannot read replay chunk"),
])
def test_damaged_runs_refuse_to_resume(compose_config, finished, tmp_path, capfd, damage, message):
    run_dir = copy_run(finished, tmp_path / "run")
    path = run_dir / CHECKPOINT
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "code":
        torch.save({"format": 1, "payload": subprocess.CompletedProcess(["true"], 0)}, path)
    else:
        (run_dir / "replay" / "chunk_000001.npz").unlink()
    capfd.readouterr()
    cfg = compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]")
    refused(cfg, run_dir, message, run_dir)
    assert capfd.readouterr().err == ""  # no warning lines from torch


def eval_cli(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        rssm.evaluate.main([str(a) for a in argv])
    return e.value.code, one_line(capsys.readouterr().err)


def test_rssm_eval_errors(finished, tmp_path, capsys):
    stopped = copy_run(finished, tmp_path / "stopped")
    (stopped / "model.pt").unlink()  # as a run stopped by a signal leaves it: rssm-eval plays its checkpoint
    (tmp_path / "empty").mkdir()
    rssm.evaluate.main([str(stopped), "--episodes", "1", "--out", str(tmp_path / "stopped.json")])
    assert json.loads((tmp_path / "stopped.json").read_text())["episodes"] == 1
    cases = [
        ([tmp_path / "empty"], f"no rssm run at {tmp_path / 'empty'}: give a run directory"),
        ([tmp_path / "nowhere"], f"no rssm run at {tmp_path / 'nowhere'}: give a run directory"),
        ([stopped / "config.yaml"], f"{stopped / 'config.yaml'} is a file: give an rssm run directory"),
        ([finished, "--video", tmp_path / "no" / "a.gif"], f"the folder {tmp_path / 'no'} does not exist"),
        ([finished, "--out", tmp_path / "no" / "e.json"], f"the folder {tmp_path / 'no'} does not exist"),
    ]
    before = hashes(finished, stopped)
    for argv, message in cases:
        status, line = eval_cli(capsys, *argv)
        assert status == 2 and line.startswith("rssm-eval: error: ") and message in line, line
    assert hashes(finished, stopped) == before


def test_an_env_module_that_does_not_exist(compose_config, tmp_path):
    refused(compose_config(*RUN, "env.id=no_such_module:Env-v0"), tmp_path / "run",
            "cannot make environment 'no_such_module:Env-v0': ModuleNotFoundError: No module named 'no_such_module'")


def test_an_env_module_that_does_not_exist_from_the_cli(tmp_path, run_cli):
    proc = run_cli(*RUN, "env.id=no_such_module:Env-v0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 2
    assert "rssm-train: error: cannot make environment 'no_such_module:Env-v0'" in one_line(proc.stderr)


def test_an_action_space_whose_repr_spans_lines(compose_config, tmp_path, faulty):
    refused(compose_config(*RUN, "env.id=faulty_envs:GridActions-v0"), tmp_path / "run",
            "environment 'faulty_envs:GridActions-v0': unsupported action space MultiDiscrete([[2 3] [4 5]]): rssm "
            "needs Discrete, 1-D MultiDiscrete or 1-D Box")
    assert list(tmp_path.iterdir()) == []


def test_an_mlflow_server_that_cannot_be_reached_is_refused_at_once(compose_config, tmp_path):
    pytest.importorskip("mlflow")
    start = time.monotonic()
    refused(compose_config(*RUN, "logger.mlflow.enabled=true", "logger.mlflow.tracking_uri=http://127.0.0.1:9"),
            tmp_path / "run", "logger.mlflow.tracking_uri=http://127.0.0.1:9: cannot reach 127.0.0.1:9: Connection "
                              "refused")
    assert time.monotonic() - start < 10 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, argv, message", [
    ("eval", ["--episodes", "0"], "argument --episodes: expected an integer >= 1, got 0"),
    ("eval", ["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    ("eval", ["--episodes", "two"], "argument --episodes: expected an integer >= 1, got 'two'"),
    ("dream", ["--fps", "nan"], "argument --fps: expected a finite number > 0, got nan"),
    ("dream", ["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    ("plot", ["--xmax", "inf"], "argument --xmax: expected a finite number > 0, got inf"),
    ("plot", ["--ylim", "1", "0"], "argument --ylim: LOW must be below HIGH, got 1 0"),
    ("plot", ["--reference-repeat", "0"], "argument --reference-repeat: expected an integer >= 1, got 0"),
    ("plot", ["--nope"], "unrecognized arguments: --nope"),
])
def test_bad_flags_of_every_command_are_one_line(finished, tmp_path, capsys, command, argv, message):
    import rssm.dream
    import rssm.plot

    main = {"eval": rssm.evaluate.main, "dream": rssm.dream.main, "plot": rssm.plot.main}[command]
    extra = ["--out", str(tmp_path / "out")] if command == "plot" else []
    with pytest.raises(SystemExit) as e:
        main([str(finished), *argv, *extra])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err) == f"rssm-{command}: error: {message} (see rssm-{command} --help)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["eval", "dream"])
def test_a_device_that_does_not_exist(finished, tmp_path, capsys, command):
    import rssm.dream

    main = {"eval": rssm.evaluate.main, "dream": rssm.dream.main}[command]
    with pytest.raises(SystemExit) as e:
        main([str(finished), "--device", "banana", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err) == (f"rssm-{command}: error: device=banana is not a device: give auto, "
                                                 f"cpu, cuda or cuda:N")



# Refusals leave the file system as they found it.


def test_a_refused_config_leaves_no_directory(tmp_path, run_cli):
    proc = run_cli("trainer.steps=0", f"hydra.run.dir={tmp_path / 'a' / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and one_line(proc.stderr) == "rssm-train: error: trainer.steps must be > 0, got 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    (("model.units=1000000",), "not enough memory for the model (model.deter=32, model.units=1000000, model.groups=4, "
                               "model.classes=4) on cpu: one array alone needs 4,000.0 GB"),
    (("model.groups=100000", "model.classes=100000"), "not enough memory for the model"),
    (("replay.capacity=100000000000",), "replay.capacity=100,000,000,000 needs 3,000.0 GB of memory for the replay "
                                        "(100,000,000,000 transitions x 30 bytes), more than this machine's"),
    (("env.pixels=true", "env.image_size=1000000"), "not enough memory for the env's observations "
                                                     "(env.image_size=1000000): one array alone needs"),
])
def test_memory_the_run_cannot_have_is_refused_before_anything_is_written(compose_config, tmp_path, overrides,
                                                                          message):
    refused(compose_config(*RUN, *overrides), tmp_path / "run", message)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_writes_nothing(compose_config, finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    shutil.rmtree(run_dir / "replay")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    refused(compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir,
            "cannot read replay chunk", run_dir)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # no replay/ made again


def test_an_offline_run_whose_dataset_is_missing_leaves_no_directory(compose_config, tmp_path, monkeypatch):
    pytest.importorskip("minari")
    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    refused(compose_config(*DEBUG, "agent=world_model", "offline.minari=no/such-v0"), tmp_path / "out" / "run",
            "cannot load the Minari dataset 'no/such-v0'")
    assert not (tmp_path / "out").exists()
