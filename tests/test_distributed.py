"""Data-parallel training (`rssm.distributed`): ranks on the CPU over gloo, two processes each."""

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_sync import batch
from test_train import read_scalars

from rssm.build import build_agent
from rssm.checkpoint import load_checkpoint
from rssm.distributed import Ranks
from rssm.envs import EnvSpec
from rssm.logging import MeanTracker

SPEC = EnvSpec({"obs": (4,)}, (3,), True)
B, T, UPDATES = 4, 8, 3


def _fixed_draws() -> None:
    """Every uniform draw 0.5: the latents and actions sampled by an update then depend on their own logits
    only, not on how the batch is split, so that ranks and one process can be compared exactly."""
    torch.rand = lambda *size, **kwargs: torch.full(size[0] if len(size) == 1 and isinstance(size[0], tuple | list)
                                                    else size, 0.5, **kwargs)
    torch.rand_like = lambda x, **kwargs: torch.full_like(x, 0.5, **kwargs)


def _updated(cfg, ranks: Ranks, rows: slice) -> dict[str, torch.Tensor]:
    """The agent's state after UPDATES updates on rows `rows` of each batch."""
    torch.manual_seed(0)
    agent = build_agent(cfg, SPEC, torch.device("cpu"), ranks)
    for i in range(UPDATES):
        agent.update({k: v[rows] for k, v in batch(B, T, SPEC, seed=i).items()})
    state = agent.state_dict()
    return {f"{name}.{k}": v for name in agent.modules() for k, v in state[name].items()}


def _rank_worker(rank: int, world: int, store: str, cfg, out: str) -> None:
    torch.set_num_threads(1)
    _fixed_draws()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        half = B // world
        torch.save(_updated(cfg, Ranks(rank, world), slice(rank * half, (rank + 1) * half)), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("overrides", [("agent=world_model",), ()], ids=["world-model", "dreamer"])
def test_two_ranks_with_half_batches_update_as_one_process_with_the_whole_batch(compose_config, tmp_path,
                                                                                  monkeypatch, overrides):
    cfg = compose_config("model=xxs", "model.deter=32", "model.units=32", "model.groups=4", "model.classes=4",
                         "agent.horizon=4", "optim.warmup=0", *overrides)  # full steps from the first
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "store"), cfg, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    monkeypatch.setattr(torch, "rand", torch.rand)  # both restored after the test
    monkeypatch.setattr(torch, "rand_like", torch.rand_like)
    _fixed_draws()
    whole = _updated(cfg, Ranks(), slice(None))
    assert ranks[0].keys() == whole.keys()
    for k, v in whole.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), f"{k} differs between the ranks"
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    torch.manual_seed(0)
    initial = build_agent(cfg, SPEC, torch.device("cpu")).wm.state_dict()
    moved = max((whole[f"world_model.{k}"] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3  # far more than the tolerance: the updates moved the weights


def test_metric_totals_merge_into_the_means_over_all_values():
    a, b = MeanTracker(), MeanTracker()
    a.add({"loss": torch.tensor(1.0), "episode/return": 10.0})
    a.add({"loss": torch.tensor(float("nan"))})  # a skipped update
    b.add({"loss": torch.tensor(3.0)})
    b.add({"loss": torch.tensor(5.0)})
    merged = MeanTracker.merge([a.totals(), b.totals()])
    assert merged == {"loss": 3.0, "episode/return": 10.0}


def torchrun(*args: str, cwd: Path, env: dict[str, str], script: bool = False,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node=2 --standalone -m rssm ARGS`, or with `script` `... $(which rssm-train)
    ARGS` (the console script of this Python: a shim on PATH, such as pyenv's, may not be a Python file)."""
    entry = [str(Path(sysconfig.get_path("scripts")) / "rssm-train")] if script else ["-m", "rssm"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", *entry, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def test_torchrun_trains_one_run_with_two_ranks_and_resumes_it_as_if_never_stopped(tmp_path, cli_environ):
    run_dir = tmp_path / "run"
    args = ("experiment=debug", "trainer.progress=false", "trainer.checkpoint_every=100")
    proc = torchrun(*args, "trainer.steps=200", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=cli_environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("x 2 ranks") == 1  # rank 0 alone reports
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    scalars = read_scalars(run_dir)
    assert {"loss/wm", "episode/return", "eval/return_mean", "perf/env_steps_per_s"} <= set(scalars)
    assert sorted(p.name for p in (run_dir / "replay").iterdir()) == ["rank_0", "rank_1"]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert len(state["ranks"]) == 2
    # Each rank stepped its own envs, with its own seeds (about 100 env steps each: resets are not env steps),
    # and the run counts the env steps of both.
    steps = [part["collector"]["env_steps"] for part in state["ranks"]]
    assert all(95 <= s <= 105 for s in steps)
    assert [part["progress"]["env_steps"] for part in state["ranks"]] == [sum(steps)] * 2 and sum(steps) >= 200
    tails = [part["replay"]["tail"]["obs"] for part in state["ranks"]]
    assert not torch.equal(tails[0], tails[1])
    assert (run_dir / "model.pt").is_file()

    proc = torchrun(f"resume={run_dir}", "trainer.steps=300", "allow_changes=[trainer.steps]", cwd=tmp_path,
                    env=cli_environ, script=True)  # the console script, as `torchrun $(which rssm-train)`
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    # The same run, never stopped, ends with the same weights.
    straight = tmp_path / "straight"
    proc = torchrun(*args, "trainer.steps=300", f"hydra.run.dir={straight}", cwd=tmp_path, env=cli_environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, never = (torch.load(d / "model.pt", weights_only=True)["world_model"] for d in (run_dir, straight))
    assert all(torch.equal(resumed[k], never[k]) for k in never)

    # Another number of ranks is refused in one line.
    single = subprocess.run([sys.executable, "-m", "rssm", f"resume={run_dir}"],
                            capture_output=True, text=True, cwd=tmp_path, env=cli_environ, timeout=300)
    assert single.returncode == 2
    assert single.stderr.strip().splitlines() == [
        f"rssm-train: error: cannot resume {run_dir / 'checkpoint.pt'} with one process: its run was trained with "
        "2 ranks (torchrun --nproc-per-node x --nnodes), and a run continues with the ranks it began with"]


def _start(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """A long two-rank debug run under torchrun, once it has written its first checkpoint."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m",
               "rssm", "experiment=debug", "trainer.progress=false", "trainer.steps=1000000",
               "trainer.checkpoint_every=100", f"hydra.run.dir={run_dir}"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.poll() is None, job.communicate()[1][-3000:]
    return job, run_dir


def _rank_of(pid: int) -> int:
    """The rank torchrun gave the worker process `pid` (its RANK environment variable)."""
    environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    return int(environ[b"RANK"])


def test_a_rank_that_dies_ends_the_job_with_one_line_and_a_loadable_checkpoint(tmp_path, cli_environ):
    job, run_dir = _start(tmp_path, cli_environ)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    rank = {_rank_of(int(pid)): int(pid) for pid in workers}
    assert sorted(rank) == [0, 1]
    os.kill(rank[1], signal.SIGKILL)
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("rssm-train:")]
    assert len(lines) == 1 and "rank 0: rank 1 of the job ended" in lines[0] and "checkpoint" in lines[0], err[-3000:]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert len(state["ranks"]) == 2


@pytest.mark.parametrize("to", ["torchrun", "rank 1"])
def test_sigterm_saves_and_stops_every_rank_at_the_same_step(tmp_path, cli_environ, to):
    job, run_dir = _start(tmp_path, cli_environ)
    time.sleep(2)
    if to == "torchrun":  # which passes it on to every rank
        job.send_signal(signal.SIGTERM)
    else:  # one rank alone: the ranks agree to stop at its next env step
        workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        os.kill(next(int(pid) for pid in workers if _rank_of(int(pid)) == 1), signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    lines = sorted(line for line in err.splitlines() if line.startswith("rssm-train:"))
    assert [line.split(":")[1] for line in lines] == [" rank 0", " rank 1"], err[-3000:]
    assert all("stopped by SIGTERM" in line and "torchrun with 2 ranks: rssm-train resume=" in line for line in lines)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    steps = {part["progress"]["env_steps"] for part in state["ranks"]}
    assert len(steps) == 1
    step = steps.pop()
    assert all(f"at env step {step};" in line for line in lines)


def test_two_machines_rendezvous_over_loopback_and_train_one_run(tmp_path, cli_environ):
    port = 29_000 + np.random.default_rng().integers(0, 1000)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--nnodes=2",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=rssm-test", "-m", "rssm",
               "experiment=debug", "trainer.progress=false", "trainer.steps=200"]
    nodes = [subprocess.Popen([*command[:3], f"--node-rank={k}", *command[3:]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=cli_environ) for k in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    # One run directory under hydra's default outputs/<date>/<time>, named by rank 0's start time.
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs
    state = load_checkpoint(runs[0] / "checkpoint.pt")
    assert [part["collector"]["env_steps"] > 90 for part in state["ranks"]] == [True, True]
