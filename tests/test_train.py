from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rssm.training import train

EXPECTED_TAGS = {
    "loss/rec", "loss/reward", "loss/cont", "loss/kl_dyn", "loss/kl_rep", "loss/wm",
    "wm/dyn_kl", "wm/rep_kl", "wm/prior_entropy", "wm/post_entropy", "grad_norm/wm",
    "episode/return", "episode/length", "perf/env_steps_per_s", "perf/updates_per_s",
}


def read_scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_debug_run_end_to_end_from_the_cli(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    proc = run_cli("experiment=debug", "trainer.progress=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout
    scalars = read_scalars(run_dir)
    assert EXPECTED_TAGS <= set(scalars), EXPECTED_TAGS - set(scalars)
    assert all(np.isfinite(v).all() for v in scalars.values())
    assert scalars["perf/updates"][-1] > 0
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert "rssm.post_out.weight" in state["world_model"]
    assert (run_dir / "config.yaml").read_text().count("CartPole-v1") == 1


def test_multirun_runs_each_seed(tmp_path, run_cli):
    proc = run_cli("-m", "experiment=debug", "trainer.progress=false", "trainer.steps=120", "seed=0,1",
                   f"hydra.sweep.dir={tmp_path}/multi", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "multi").iterdir() if p.is_dir()) == ["0", "1"]
    assert all((tmp_path / "multi" / job / "model.pt").exists() for job in ["0", "1"])


def test_same_seed_gives_identical_losses(compose_config, tmp_path):
    cfg = compose_config("experiment=debug", "trainer.progress=false", "trainer.steps=200")
    first = train(cfg, tmp_path / "a")
    second = train(cfg, tmp_path / "b")
    assert first["perf/updates"] > 0
    losses = [k for k in first if k.startswith(("loss/", "wm/", "grad_norm/"))]
    assert losses and all(first[k] == second[k] for k in losses)
    a, b = read_scalars(tmp_path / "a"), read_scalars(tmp_path / "b")
    assert a["loss/wm"] == b["loss/wm"]
    other = train(compose_config("experiment=debug", "trainer.progress=false", "trainer.steps=200", "seed=1"),
                  tmp_path / "c")
    assert other["loss/wm"] != first["loss/wm"]


def test_open_loop_errors_are_logged_and_leave_training_unchanged(compose_config, tmp_path):
    run = ("experiment=debug", "trainer.progress=false", "trainer.steps=200")
    plain = train(compose_config(*run, "trainer.openloop_every=0"), tmp_path / "plain")
    logged = train(compose_config(*run, "trainer.openloop_every=50", "trainer.openloop_context=3",
                                  "trainer.openloop_horizons=[1,4]"), tmp_path / "logged")
    assert plain["perf/updates"] > 0 and plain["loss/wm"] == logged["loss/wm"]
    assert not any(tag.startswith("openloop/") for tag in read_scalars(tmp_path / "plain"))
    scalars = read_scalars(tmp_path / "logged")
    tags = {f"openloop/{name}_error_h{k}" for name in ("obs", "reward", "cont") for k in (1, 4)}
    assert {tag for tag in scalars if tag.startswith("openloop/")} == tags
    events = EventAccumulator(str(tmp_path / "logged"))
    events.Reload()
    assert [e.step for e in events.Scalars("openloop/obs_error_h1")] == [50, 100, 150, 200]
    assert all(np.isfinite(scalars[tag]).all() and min(scalars[tag]) >= 0 for tag in tags)


def test_python_dash_m_entry_point(tmp_path, run_cli):
    proc = run_cli("experiment=debug", "trainer.progress=false", "trainer.steps=110", f"hydra.run.dir={tmp_path}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.pt").exists()


def test_stop_return_ends_the_run_at_the_first_eval_that_reaches_it(compose_config, tmp_path):
    cfg = compose_config("experiment=debug", "trainer.progress=false", "trainer.steps=450", "trainer.eval_every=150",
                         "trainer.eval_episodes=1", "trainer.stop_return=-1.0")  # every return reaches -1
    last = train(cfg, tmp_path)
    assert read_scalars(tmp_path)["eval/return_mean"] == [last["eval/return_mean"]]  # one eval, at step 150
    assert (tmp_path / "model.pt").exists()


def test_vector_envs_train_checkpoint_and_resume(compose_config, tmp_path):
    from rssm.checkpoint import CHECKPOINT, load_checkpoint

    run = ("experiment=debug", "trainer.progress=false", "env.num_envs=3", "replay.chunk=20", "trainer.log_every=50",
           "trainer.eval_every=150", "trainer.eval_episodes=2", "trainer.openloop_every=0")
    last = train(compose_config(*run, "trainer.steps=200"), tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    steps = state["collector"]["env_steps"]
    assert 200 <= steps < 203 and last["perf/updates"] > 0  # the 3 envs step together: up to 2 steps past
    with np.load(tmp_path / "replay" / "chunk_000000.npz") as chunk:
        assert chunk["obs"].shape == (20, 3, 4) and chunk["is_first"][0].all()  # (rows, envs, obs)
        assert (chunk["obs"][0, 0] != chunk["obs"][0, 1]).any()  # envs seeded apart
    scalars = read_scalars(tmp_path)
    assert len(scalars["eval/return_mean"]) == 2  # step 150 and the end
    train(compose_config(*run, "trainer.steps=260", f"resume={tmp_path}", "allow_changes=[trainer.steps]"), tmp_path)
    assert load_checkpoint(tmp_path / CHECKPOINT)["collector"]["env_steps"] >= 260
    # The evaluation logged at the checkpoint's own step survives the resumed run's purge of later events.
    assert len(read_scalars(tmp_path)["eval/return_mean"]) == 3
