"""rssm.train and rssm.compose: training from Python as rssm-train trains, Ctrl-C and resume included."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import rssm
import rssm.collector
from rssm.checkpoint import load_checkpoint

TINY = ["experiment=debug", "trainer.progress=false", "logger=[jsonl]", "trainer.eval_episodes=2"]


def env_steps(run_dir) -> int:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return int(state["progress"].get("env_steps", state["collector"]["env_steps"]))


def test_a_tiny_run_from_python_writes_the_run_and_returns_it_loaded(tmp_path):
    run_dir = tmp_path / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run = rssm.train([*TINY, "threads=1", "trainer.steps=200", f"hydra.run.dir={run_dir}"])  # as on the CLI
        assert torch.get_num_threads() == 3  # the run's threads=1 held for the run alone
    finally:
        torch.set_num_threads(before)
    assert isinstance(run, rssm.Loaded) and run.path == run_dir / "checkpoint.pt"
    assert {"checkpoint.pt", "model.pt", "config.yaml", "overrides.yaml", "train.log", "metrics.jsonl"} <= {
        p.name for p in run_dir.iterdir()}
    assert env_steps(run_dir) == 200
    assert "rssm: finished: 200 env steps" in (run_dir / "train.log").read_text()
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/return_mean" in e for e in evals)
    obs, _ = run.make_env().reset(seed=0)
    action, _ = run.policy.predict(obs)
    assert action in (0, 1)
    # the run's overrides, as the command line would have written them: `rssm-train resume=` composes them again
    assert "trainer.steps=200" in (run_dir / "overrides.yaml").read_text()


def test_ctrl_c_stops_a_python_run_with_its_checkpoint_and_python_resumes_it(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_step, sent = rssm.collector.Collector.step, []

    def step(self, actions):  # Ctrl-C as a notebook's interrupt sends it: SIGINT to this process
        out = real_step(self, actions)
        if self.env_steps >= 150 and not sent:
            sent.append(self.env_steps)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(rssm.collector.Collector, "step", step)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="SIGINT") as stopped:
        rssm.train([*TINY, "trainer.steps=400"], run_dir=run_dir)
    assert "resume=" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is handler  # the interpreter's own Ctrl-C is back
    stopped_at = env_steps(run_dir)
    assert 150 <= stopped_at < 400
    monkeypatch.setattr(rssm.collector.Collector, "step", real_step)

    run = rssm.train({"resume": str(run_dir)})
    assert env_steps(run_dir) == 400
    log = (run_dir / "train.log").read_text()
    assert f"resumed from {run_dir / 'checkpoint.pt'} at env step {stopped_at}" in log
    assert run.path == run_dir / "checkpoint.pt"


def test_dict_overrides_compose_as_the_same_strings():
    as_dict = rssm.compose({"env": {"task": "walker_walk"}, "trainer.steps": 20000,
                            "logger": ["tensorboard", "jsonl"], "trainer.stop_return": None,
                            "replay.save": False, "hydra.run.dir": "runs/x y"})
    as_list = rssm.compose(["env.task=walker_walk", "trainer.steps=20000", "logger=[tensorboard,jsonl]",
                            "trainer.stop_return=null", "replay.save=false"])
    assert as_dict == as_list
    assert as_dict.env.task == "walker_walk" and as_dict.env.action_repeat == 2  # env.task implied env=dmc
    assert rssm.compose({"env.id": "Acrobot-v1"}).env == rssm.compose(["env=gym", "env.id=Acrobot-v1"]).env


@pytest.mark.parametrize("overrides, message", [
    (["trainer.steps=abc"], "Error merging override trainer.steps=abc. Value 'abc' of type 'str' could not be "
                            "converted to Integer"),
    (["env=nope"], "Could not find 'env/nope'"),
    ({"trainer.steps": -5}, "trainer.steps must be > 0, got -5"),
    ("env=gym", "overrides must be a list of 'key=value' strings or a dict"),
])
def test_overrides_a_run_refuses_raise_one_line(overrides, message):
    with pytest.raises(rssm.UserError) as refused:
        rssm.compose(overrides)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_refused_python_run_leaves_no_directory(tmp_path):
    with pytest.raises(rssm.UserError, match="NoSuchEnv"):
        rssm.train([*TINY, "env.id=NoSuchEnv-v0"], run_dir=tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    with pytest.raises(rssm.UserError, match="run_dir cannot be given with resume"):
        rssm.train({"resume": str(tmp_path)}, run_dir=tmp_path / "other")


def test_a_composed_config_changed_in_python_is_what_trains(tmp_path):
    cfg = rssm.compose([*TINY, "trainer.steps=200"])
    cfg.seed = 7
    run = rssm.train(cfg, run_dir=tmp_path / "run")
    assert run.config.seed == 7 and env_steps(tmp_path / "run") == 200


def test_compose_inside_a_hydra_app_leaves_the_app_s_hydra_as_it_was(tmp_path):
    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        outer = GlobalHydra.instance().hydra
        assert rssm.compose(["seed=3"]).seed == 3
        assert GlobalHydra.instance().hydra is outer
    assert not GlobalHydra.instance().is_initialized()


def test_import_rssm_and_help_load_no_torch(cli_environ):
    """`rssm-train --help` and each Tab of shell completion start a process: without torch they answer at once."""
    script = ("import sys\nsys.argv = ['rssm-train', '--help']\nfrom rssm.app import main\ntry:\n    main()\n"
              "except SystemExit:\n    pass\nimport rssm\nprint('torch' in sys.modules, rssm.__version__ != '')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_environ, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rssm-train" in out.stdout and out.stdout.splitlines()[-1] == "False True"


def test_the_package_exports_what_its_all_names():
    assert all(getattr(rssm, name) is not None for name in rssm.__all__)
    assert callable(rssm.train) and callable(rssm.compose) and rssm.RSSM.__name__ == "RSSM"
    assert isinstance(rssm.kl_divergence(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)), torch.Tensor)
    assert np.isclose(float(rssm.kl_divergence(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)).sum()), 0.0)
