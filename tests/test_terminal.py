"""What the terminal shows while a run trains and when it ends: the progress bar's live rates and returns, and the
end-of-run summary with commands that work when pasted."""

import functools
import math
import re
import shlex
import subprocess
import sys

import pytest
import tqdm
from conftest import cli_env
from test_train import read_scalars

import rssm.logging
from rssm import report
from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.logging import Rate
from rssm.run_state import Progress, RunStopped
from rssm.training import train

RUN = ("experiment=debug", "trainer.prefill=20", "trainer.eval_episodes=2")


def test_rate_is_the_counters_speed_over_its_last_seconds():
    rate = Rate(window=5.0)
    assert rate(100, now=10.0) == 0.0  # the first reading: nothing to measure yet
    assert rate(110, now=12.0) == 5.0  # since the first reading
    assert rate(130, now=16.0) == 5.0  # 30 in 6 s; the next window starts here ...
    assert rate(160, now=20.0) == 6.0  # (over 10 s still)
    assert rate(160, now=21.0) == 6.0  # ... and is the one counted once 5 s have passed: 30 in 5 s
    assert rate(160, now=30.0) == 0.0  # stopped: none since 21 s, the window's start now


def frames(err: str) -> list[tuple[int, int, str]]:
    """Each drawing of the bar in `err` as (step, total, postfix)."""
    found = re.findall(r"(\d+)/(\d+) \[[^,\]]*, [^,\]]*(?:, ([^\]]*))?\]", err)
    return [(int(n), int(total), postfix) for n, total, postfix in found]


def shown(postfix: str, name: str) -> float:
    """The value `name=...` in a bar's postfix; nan where it is not shown."""
    found = re.search(rf"{re.escape(name)}=(-?[\d.]+)", postfix)
    return float(found[1]) if found else math.nan


def test_the_bar_shows_live_updates_per_s_and_the_eval_return_from_the_start_and_after_a_resume(
        compose_config, tmp_path, capsys, monkeypatch):
    # every step drawn, what each step shows can be checked (tqdm reads its TQDM_* variables once, at import)
    monkeypatch.setattr(rssm.logging, "tqdm", functools.partial(tqdm.tqdm, mininterval=0, miniters=1))
    bar = ("trainer.progress=true", "trainer.log_every=10000", "trainer.eval_every=60")  # no log before step 60
    train(compose_config(*RUN, *bar, "trainer.steps=100"), tmp_path)
    first = frames(capsys.readouterr().err)
    train(compose_config(*RUN, *bar, "trainer.steps=200", f"resume={tmp_path}", "allow_changes=[trainer.steps]"),
          tmp_path)
    resumed = frames(capsys.readouterr().err)

    assert first[0][:2] == (0, 100) and resumed[0][:2] == (100, 200)  # tqdm's rate and ETA count from there
    before_log = [shown(p, "updates/s") for n, _, p in first if 20 < n < 60]  # updates begin after the prefill
    assert before_log and before_log[-1] > 0.0
    prefill = [p for n, _, p in first if 0 < n < 20]
    assert prefill and all(p.startswith("no updates yet") and "updates/s" not in p for p in prefill)
    assert [shown(p, "updates/s") for n, _, p in resumed if n < 120][-1] > 0.0  # before the resumed run logs
    evaluated = read_scalars(tmp_path)["eval/return_mean"]
    assert {shown(p, "eval return") for n, _, p in first if 60 < n < 100} == {float(f"{evaluated[0]:.1f}")}
    assert all(math.isnan(shown(p, "eval return")) for n, _, p in first if n < 60)
    assert shown(resumed[-1][2], "eval return") == float(f"{evaluated[-1]:.1f}")
    assert all(shown(p, "train return") > 0 for n, _, p in first if n > 60)  # CartPole's episodes are shorter


def summary(out: str) -> list[str]:
    return out[out.index("rssm: finished: "):].splitlines()


def test_a_finished_run_ends_with_a_summary_whose_command_plays_its_policy(compose_config, tmp_path, capsys):
    run_dir = tmp_path / "my run"  # quoted in the commands
    train(compose_config(*RUN, "trainer.progress=false", "trainer.steps=150"), run_dir)
    lines = summary(capsys.readouterr().out)
    scalars, state = read_scalars(run_dir), load_checkpoint(run_dir / CHECKPOINT)
    updates = int(state["progress"]["updates"])
    assert re.fullmatch(rf"rssm: finished: 150 env steps, {updates} updates in (\d+m )?\d+s; final eval return "
                        rf"{scalars['eval/return_mean'][-1]:.1f} \+- {scalars['eval/return_std'][-1]:.1f} "
                        r"\(2 episodes, mode policy\)", lines[0]), lines[0]
    assert lines[1] == (f"rssm: weights in {run_dir / 'model.pt'}; logs in {run_dir}: TensorBoard events "
                        f"(tensorboard --logdir {shlex.quote(str(run_dir))})")
    assert lines[2].startswith("rssm: watch the policy: rssm-eval ") and len(lines) == 3

    command = shlex.split(lines[2].split("policy: ", 1)[1])
    assert command[:2] == ["rssm-eval", str(run_dir)]
    proc = subprocess.run([sys.executable, "-m", "rssm.evaluate", *command[1:], "--episodes", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "episode.gif").stat().st_size > 0


def test_the_summary_of_a_resumed_run_with_wandb_offline(compose_config, tmp_path, capsys):
    cfg = compose_config(*RUN, "agent=world_model", "logger=[jsonl,wandb]")
    assert cfg.logger.wandb.enabled and cfg.logger.wandb.mode == "offline"
    run_dir = tmp_path / "a run"
    report.summary(cfg, run_dir, Progress(updates=40, env_steps=300), {"loss/wm": 1.23456}, 65.2, resumed=True)
    assert capsys.readouterr().out.splitlines() == [
        "rssm: finished: 300 env steps, 40 updates in 1m 05s this session; final world-model loss 1.235",
        f"rssm: weights in {run_dir / 'model.pt'}; logs in {run_dir}: metrics.jsonl, wandb/",
        f"rssm: upload the W&B run: wandb sync '{run_dir / 'wandb'}'/offline-run-*",
    ]  # a world model alone has no policy for rssm-eval to play


def test_a_run_that_stops_early_prints_no_summary(compose_config, tmp_path, capsys):
    cfg = compose_config(*RUN, "trainer.progress=false", "agent=world_model", "wm.lr=1e30", "trainer.max_nonfinite=2")
    with pytest.raises(RunStopped, match="updates in a row had a non-finite loss"):
        train(cfg, tmp_path)
    assert "rssm: finished" not in capsys.readouterr().out
