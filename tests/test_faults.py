"""Faults: envs that fail, hang or raise, a model that goes bad, and signals and kills (Ctrl-C, SIGTERM, SIGKILL,
a second signal, rssm-eval interrupted). Each ends in one line (status 1 for a failed run, 128 + signum after
a signal), never a traceback, and loses nothing: the last checkpoint is kept and the run can be continued."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEBUG, RUN, copy_run, hashes, one_line, refused
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rssm.evaluate
import rssm.training
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.config import UserError
from rssm.training import RunStopped, train

# Envs that fail, hang or raise: the run restarts them, or stops with its checkpoint saved.


def test_a_flaky_env_gives_up_with_the_checkpoint_saved(compose_config, tmp_path, faulty, capsys):
    faulty("flaky")  # raises at every third step: never five failures in a row
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), run_dir)
    assert e.value.status == 1
    message = one_line(str(e.value))
    assert "RuntimeError('simulator crashed'); 5 failures within 9 env steps, giving up; checkpoint saved at " \
           "env step 10, continue with: rssm-train resume=" in message
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 10
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert [w.split("(failure ")[1] for w in warnings] == ["1; the next warning at failure 2)",
                                                          "2; the next warning at failure 4)",
                                                          "4; the next warning at failure 8)"]


def test_an_env_that_cannot_be_made_again_ends_the_run_with_the_checkpoint_saved(compose_config, tmp_path, faulty):
    faulty("crash_then_unmakeable")
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), run_dir)
    assert e.value.status == 1
    assert "making the env again failed too: cannot make environment 'faulty_envs:Faulty-v0': ConnectionError: the " \
           "simulator's licence server is down; checkpoint saved at env step 49" in one_line(str(e.value))
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 49


def test_non_finite_observations_are_an_env_failure(compose_config, tmp_path, faulty, capsys):
    faulty("nan_once")
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["train/env_failures"] == 1 and (tmp_path / "run" / "model.pt").exists()
    assert "the env returned a non-finite observation 'obs'" in capsys.readouterr().err


def test_an_evaluation_env_that_fails_is_restarted(compose_config, tmp_path, faulty):
    faulty("raise_in_eval")
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["eval/return_mean"] > 0 and (tmp_path / "run" / "model.pt").exists()


def test_a_step_timeout_restarts_an_env_that_hangs(compose_config, tmp_path, faulty, capsys):
    faulty("hang_once")
    start = time.monotonic()
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0", "env.step_timeout=1"), tmp_path / "run")
    assert last["train/env_failures"] == 1 and time.monotonic() - start < 600
    assert "environment raised in step after env step 29: EnvTimeout('no answer within env.step_timeout=1 s')" \
        in capsys.readouterr().err


@pytest.mark.parametrize("mode, raised", [("system_exit", "SystemExit(3)"),
                                          ("keyboard_interrupt", "KeyboardInterrupt()")])
def test_an_env_that_raises_system_exit_or_keyboard_interrupt_has_failed(compose_config, tmp_path, faulty, capsys,
                                                                         mode, raised):
    faulty(mode)
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["train/env_failures"] == 1 and (tmp_path / "run" / "model.pt").exists()
    assert f"environment raised in step after env step 29: {raised}; env restarted" in capsys.readouterr().err


def test_an_env_whose_close_raises(compose_config, tmp_path, faulty, capsys):
    faulty("close_raises")
    last = train(compose_config(*RUN, "env.id=faulty_envs:Faulty-v0"), tmp_path / "run")
    assert last["eval/return_mean"] > 0 and (tmp_path / "run" / "model.pt").exists()
    assert "rssm: warning: the env's close() raised RuntimeError: the simulator's licence lapsed; ignored" \
        in capsys.readouterr().err


def test_a_model_that_acts_with_nan_stops_the_run_keeping_the_checkpoint(compose_config, tmp_path, monkeypatch):
    from rssm.agent import Agent

    real_update = Agent.update

    def update_then_diverge(self, batch):  # a model gone bad in a way the update's own checks do not see
        metrics = real_update(self, batch)
        if int(self.wm_opt.state[self.wm_params[0]]["step"]) == 30:
            with torch.no_grad():
                self.actor.net.out.weight.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(Agent, "update", update_then_diverge)
    run_dir = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN), run_dir)
    assert e.value.status == 1
    message = re.fullmatch(r"the model's state or policy is not finite \(nan or inf\): it cannot act at env step "
                           r"(\d+); stopped, the last checkpoint in .*", one_line(str(e.value)))
    assert message and int(message[1]) > 100  # after the 30th update, the first checkpoint's 100 steps before it
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 100
    assert not (run_dir / "model.pt").exists()



# Signals and kills: the run stops at a point it can be continued from.


def test_ctrl_c_while_a_run_starts(compose_config, finished, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rssm.training, "build_agent", interrupted)
    run_dir = copy_run(finished, tmp_path / "run")
    before = hashes(run_dir)
    with pytest.raises(RunStopped) as e:
        train(compose_config(*RUN, "trainer.steps=300", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir)
    assert e.value.status == 128 + signal.SIGINT
    assert one_line(str(e.value)) == f"stopped by SIGINT while the run in {run_dir} was starting; no checkpoint was " \
                                     "written"
    assert hashes(run_dir) == before


def fork_train(cfg, run_dir: Path) -> int:
    """train(cfg, run_dir) in a forked child; its pid. It exits 0 when done, 2 on a UserError, 3 otherwise."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            train(cfg, run_dir)
            code = 0
        except UserError:
            code = 2
        finally:
            os._exit(code)
    return pid


def wait_for(condition, pid: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        done, status = os.waitpid(pid, os.WNOHANG)
        assert not done, f"the run ended ({status}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def test_two_runs_in_one_directory(compose_config, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(*DEBUG, "agent=world_model", "trainer.steps=100000", "trainer.checkpoint_every=50",
                         "trainer.prefill=20")
    pid = fork_train(cfg, run_dir)
    try:
        wait_for(lambda: (run_dir / CHECKPOINT).exists(), pid, "checkpoint")
        os.kill(pid, signal.SIGSTOP)  # hold the first run still while the second tries
        refused(cfg, run_dir, f"{run_dir} is in use by another run; wait for it to end or pick another dir", run_dir)
        resume = compose_config(*DEBUG, "agent=world_model", "trainer.steps=100000", "trainer.checkpoint_every=50",
                                "trainer.prefill=20", f"resume={run_dir}")
        refused(resume, run_dir, f"{run_dir} is in use by another run", run_dir)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The OS released the dead run's lock: it can be continued.
    steps = load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"]
    train(compose_config(*DEBUG, "agent=world_model", f"trainer.steps={steps + 20}", "trainer.checkpoint_every=50",
                         "trainer.prefill=20", f"resume={run_dir}", "allow_changes=[trainer.steps]"), run_dir)
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == steps + 20


def needed_chunks_exist(run_dir: Path, chunk: int) -> int:
    """Every replay chunk the checkpoint needs is there, whole; returns its env steps (0 without one)."""
    if not (run_dir / CHECKPOINT).exists():
        return 0
    state = load_checkpoint(run_dir / CHECKPOINT)
    from rssm.replay import read_chunk

    for index in range(state["replay"]["total"] // chunk):
        assert len(read_chunk(run_dir / "replay" / f"chunk_{index:06d}.npz")["is_first"]) == chunk
    return state["collector"]["env_steps"]


def test_sigkill_at_random_moments_then_resume(compose_config, tmp_path):
    run_dir, rng = tmp_path / "run", random.Random(0)
    args = (*DEBUG, "agent=world_model", "trainer.prefill=20", "trainer.checkpoint_every=10", "replay.chunk=8")
    import torch._dynamo  # noqa: F401 - the optimizers import it on first use: once here, not in each child

    steps = []
    for kill in range(20):
        resume = (f"resume={run_dir}",) if (run_dir / CHECKPOINT).exists() else ()
        config = run_dir / "config.yaml"
        before = config.stat().st_ino if config.exists() else None
        pid = fork_train(compose_config(*args, "trainer.steps=100000", *resume), run_dir)
        # The run writes its config once it has resumed (a new file: atomic_write renames one into place).
        wait_for(lambda: config.exists() and config.stat().st_ino != before, pid, "resumed run")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment in the run: sleeping is the point here
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"kill {kill}: exit {status}"
        steps.append(needed_chunks_exist(run_dir, 8))
    assert steps == sorted(steps) and steps[-1] > 0  # no resume went back
    final = steps[-1] + 30
    train(compose_config(*args, f"trainer.steps={final}", f"resume={run_dir}", "allow_changes=[trainer.steps]"),
          run_dir)
    assert needed_chunks_exist(run_dir, 8) == final and (run_dir / "model.pt").exists()
    assert not list(run_dir.rglob("*.tmp"))


def test_ctrl_c_to_the_process_group_of_an_async_run_keeps_its_episodes(tmp_path, cli_environ):
    """A terminal's Ctrl-C reaches every process of the group, async env workers too: they ignore it, so no env
    fails, and the checkpoint holds the episodes under way."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rssm", *DEBUG, "agent=world_model", "env.num_envs=2",
                             "env.vector=async", "trainer.steps=100000", "trainer.checkpoint_every=100",
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_environ, cwd=tmp_path, start_new_session=True)  # its own process group
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert one_line(stderr).startswith("rssm-train: stopped by SIGINT at env step ") and "warning" not in stderr
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert state["collector"]["failures"] == 0 and any(e is not None for e in state["collector"]["under_way"])


def test_a_second_signal_during_the_save_does_not_interrupt_it(tmp_path, env_dir, cli_environ):
    run_dir = tmp_path / "run"
    environ = {**cli_environ, "PYTHONPATH": os.pathsep.join((str(env_dir), cli_environ["PYTHONPATH"]))}
    proc = subprocess.run([sys.executable, str(env_dir / "wrap_train.py"), *DEBUG, "agent=world_model",
                           "trainer.steps=100000", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                          env=environ, cwd=tmp_path, timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert one_line(proc.stderr) == (f"rssm-train: stopped by SIGINT at env step 150; checkpoint saved, continue "
                                     f"with: rssm-train resume={run_dir}")
    assert load_checkpoint(run_dir / CHECKPOINT)["collector"]["env_steps"] == 150
    assert not list(run_dir.rglob("*.tmp"))


def eval_events(run_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    if "eval/return_mean" not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars("eval/return_mean")]


def test_sigterm_during_evaluation_stops_it_and_the_resumed_run_redoes_it(compose_config, tmp_path, env_dir,
                                                                          cli_environ, faulty):
    run_dir = tmp_path / "run"
    args = (*RUN, "env=gym", "env.id=faulty_envs:Faulty-v0", "trainer.eval_every=100", "trainer.eval_episodes=2")
    environ = {**cli_environ, "PYTHONPATH": os.pathsep.join((str(env_dir), cli_environ["PYTHONPATH"])),
               "FAULTY": "sigterm_in_eval"}
    proc = subprocess.run([sys.executable, "-m", "rssm", *args, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert one_line(proc.stderr).startswith("rssm-train: stopped by SIGTERM at env step 100; checkpoint saved")
    assert load_checkpoint(run_dir / CHECKPOINT)["progress"]["eval_pending"] is True
    assert eval_events(run_dir) == []

    faulty("")  # the same env, without the signal
    train(compose_config(*args, f"resume={run_dir}"), run_dir)
    straight = tmp_path / "straight"
    train(compose_config(*args), straight)
    assert [s for s, _ in eval_events(run_dir)] == [100, 200]
    # The evaluation at 100 is the straight run's. (After a resume, episodes start afresh: later ones differ.)
    assert eval_events(run_dir)[0] == eval_events(straight)[0]


def test_a_second_signal_ends_a_run_whose_env_hangs(tmp_path, env_dir, cli_environ, compose_config, faulty):
    run_dir, mark = tmp_path / "run", tmp_path / "hanging"
    args = (*RUN, "env=gym", "env.id=faulty_envs:Faulty-v0", "trainer.checkpoint_every=0")
    environ = {**cli_environ, "PYTHONPATH": os.pathsep.join((str(env_dir), cli_environ["PYTHONPATH"])),
               "FAULTY": "hang", "HANG_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-m", "rssm", *args, f"hydra.run.dir={run_dir}"],
                            stderr=subprocess.PIPE, text=True, env=environ, cwd=tmp_path)
    wait_for(mark.exists, proc.pid, "the env to hang", timeout=120)
    proc.send_signal(signal.SIGINT)  # noted: the loop would stop at its next step, which never comes
    time.sleep(1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert one_line(stderr) == (f"rssm-train: stopped by a second SIGTERM at env step 29 while waiting on the env; "
                                f"checkpoint saved, continue with: rssm-train resume={run_dir}")
    faulty("")
    last = train(compose_config(*args, f"resume={run_dir}"), run_dir)
    assert last["eval/return_mean"] > 0 and (run_dir / "model.pt").exists()


def test_ctrl_c_in_rssm_eval(finished, tmp_path):
    proc = subprocess.Popen(["rssm-eval", str(finished), "--episodes", "100000", "--out", str(tmp_path / "e.json")],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(10)  # loading (a signal before its handler is installed is a KeyboardInterrupt), then playing
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert one_line(stderr) == "rssm-eval: stopped by SIGINT while playing the episodes; nothing written"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_rssm_eval_writes_its_video(finished, tmp_path, capsys, monkeypatch):
    real = rssm.evaluate.encode_gif

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(rssm.evaluate, "encode_gif", signalled)
    video = tmp_path / "a.gif"
    with pytest.raises(SystemExit) as e:
        rssm.evaluate.main([str(finished), "--episodes", "1", "--out", str(tmp_path / "e.json"), "--video", str(video)])
    assert e.value.code == 128 + signal.SIGTERM
    assert one_line(capsys.readouterr().err) == "rssm-eval: stopped by SIGTERM after its files were written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "e.json"]
