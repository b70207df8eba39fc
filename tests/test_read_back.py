"""Every file a resumed run reads back is checked, and a resume that the run's data cannot take is refused: each
case ends in one line (a UserError; through the command line, exit status 2), before any file of the run changes
and without making a file or directory."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEBUG, RUN, one_line

from rssm.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from rssm.config import UserError
from rssm.replay import read_chunk
from rssm.training import train

MORE = ("trainer.steps=300", "allow_changes=[trainer.steps]")  # a resume that goes on
OFFLINE = ("env=cartpole", *DEBUG, "agent=world_model", "offline.holdout=0.3", "trainer.log_every=10",
           "trainer.openloop_every=10", "trainer.openloop_horizons=[1,5]", "offline.updates=10")
CHUNK = Path("replay") / "chunk_000002.npz"  # one of the finished run's six chunks


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished dreamer run (steps 200, checkpoints at 100 and 200, chunks of 32 rows: six, and 8 rows in the
    checkpoint's tail), and a finished offline run (10 updates) on its replay. Copy them before changing them."""
    from hydra import compose, initialize_config_module

    from rssm.config import register_configs

    register_configs()
    root = tmp_path_factory.mktemp("finished")
    with initialize_config_module("rssm.configs", version_base=None):
        train(compose("config", overrides=list(RUN)), root / "run")
        train(compose("config", overrides=[*OFFLINE, f"offline.replay={root / 'run'}"]), root / "offline")
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file (sha256) and directory under `root`, by path."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(cfg, run_dir: Path, message: str, root: Path) -> None:
    """train(cfg, run_dir) raises a one-line UserError holding `message`, and nothing under `root` changed: no file
    written, made or removed, no directory made."""
    before = tree(root)
    with pytest.raises(UserError) as e:
        train(cfg, run_dir)
    assert message in one_line(str(e.value))
    assert tree(root) == before


def rewrite_chunk(path: Path, change) -> None:
    """Write the chunk at `path` again, as np.savez writes, with `change(arrays)`'s fields."""
    arrays = change(read_chunk(path))
    path.unlink()
    np.savez(path, **arrays)


def rewrite_checkpoint(path: Path, change) -> None:
    state = load_checkpoint(path)
    change(state)
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})


def nan_obs(a):
    return {**a, "obs": np.full_like(a["obs"], np.nan)}


# Case 1: replay chunks that can be read but do not hold the run's rows.
@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "obs": np.zeros((32, 1, 5), np.float32)},
     "its 'obs' has shape (32, 1, 5), the run's is (32, 1, 4)"),
    (lambda a: {k: v[:16] for k, v in a.items()}, "its 'obs' has shape (16, 1, 4), the run's is (32, 1, 4)"),
    (lambda a: {k: v for k, v in a.items() if k != "reward"}, "it lacks 'reward', which the run's rows hold"),
    (lambda a: {**a, "extra": a["reward"]}, "it holds 'extra', which the run's rows do not"),
    (lambda a: {**a, "obs": a["obs"].astype(np.float64)}, "its 'obs' is float64, the run's is float32"),
    (lambda a: {**a, "action": a["action"].astype(np.int64)}, "its 'action' is int64, the run's is float32"),
    (nan_obs, "its 'obs' is not finite: 128 of its 128 values are NaN or inf"),
    (lambda a: {**a, "reward": np.where(np.arange(32)[:, None] == 3, np.inf, a["reward"]).astype(np.float32)},
     "its 'reward' is not finite: 1 of its 32 values are NaN or inf"),
], ids=["obs_size", "rows", "no_reward", "extra_key", "obs_dtype", "action_dtype", "nan_obs", "inf_reward"])
def test_replay_chunks_that_do_not_match_the_run_are_refused(compose_config, finished, tmp_path, change, message):
    run_dir = shutil.copytree(finished / "run", tmp_path / "run")
    rewrite_chunk(run_dir / CHUNK, change)
    refused(compose_config(*RUN, *MORE, f"resume={run_dir}"), run_dir,
            f"cannot resume from replay chunk {run_dir / CHUNK}: {message}", tmp_path)


def test_a_checkpoint_whose_replay_rows_are_not_the_env_s_is_refused(compose_config, finished, tmp_path):
    run_dir = shutil.copytree(finished / "run", tmp_path / "run")

    def wider(state):
        state["replay"]["tail"]["obs"] = torch.zeros(8, 1, 5)

    rewrite_checkpoint(run_dir / CHECKPOINT, wider)
    refused(compose_config(*RUN, *MORE, f"resume={run_dir}"), run_dir,
            f"cannot resume from checkpoint {run_dir / CHECKPOINT}: its replay's 'obs' has rows of shape (1, 5), the "
            f"env's are (1, 4)", tmp_path)


def test_another_run_s_replay_chunks_that_do_not_match_are_refused(compose_config, finished, tmp_path):
    source = shutil.copytree(finished / "run", tmp_path / "source")
    rewrite_chunk(source / CHUNK, nan_obs)
    refused(compose_config(*OFFLINE, f"offline.replay={source}"), tmp_path / "offline",
            f"cannot train on replay chunk {source / CHUNK}: its 'obs' is not finite: 128 of its 128 values are NaN "
            f"or inf", source)


# Case 2: a change that allow_changes allows, but that the run's replay or weights cannot take.
@pytest.mark.parametrize("run, changes, message", [
    ("run", ["env.num_envs=2"], "env.num_envs cannot change on resume: the replay's chunks hold 1 env per row"),
    ("run", ["replay.chunk=16"], "replay.chunk cannot change on resume: the replay's chunk files hold 32 rows each"),
    ("run", ["replay.context=1"], "replay.context=1 cannot be given on resume of a run with replay.context=0: its "
                                  "replay holds no model states to start sequences from"),
    ("offline", ["model.units=48"], "holds a different model: world_model 'cont.hidden.0.bias' is shape (32,) there, "
                                    "shape (48,) here"),
], ids=["num_envs", "chunk", "context", "offline_units"])
def test_allowed_changes_the_run_s_data_cannot_take_are_refused(compose_config, finished, tmp_path, run, changes,
                                                                 message):
    run_dir = shutil.copytree(finished / run, tmp_path / run)
    base = RUN if run == "run" else (*OFFLINE, f"offline.replay={finished / 'run'}")  # the data it was trained on
    keys = ",".join(c.split("=")[0] for c in changes)
    more = "trainer.steps=300" if run == "run" else "offline.updates=20"
    cfg = compose_config(*base, *changes, more, f"resume={run_dir}", f"allow_changes=[{more.split('=')[0]},{keys}]")
    refused(cfg, run_dir, message, tmp_path)


# Case 3: offline settings under which nothing can be trained, in a new offline run and on resuming one.
@pytest.mark.parametrize("setting, message, resume", [
    ("offline.holdout=1.0", "offline.holdout must be in [0, 1), got 1.0", False),
    ("offline.holdout=-0.1", "offline.holdout must be in [0, 1), got -0.1", False),
    ("offline.updates=0", "offline.updates must be > 0, got 0", False),
    ("offline.holdout=0.99", "offline.holdout=0.99 leaves 0 of the 9 episodes to train on, 0 steps, fewer than one "
                             "sequence of replay.batch_length=8: lower offline.holdout", False),
    ("offline.holdout=1.0", "offline.holdout must be in [0, 1), got 1.0", True),
    ("offline.holdout=0.99", "offline.holdout=0.99 leaves 0 of the 9 episodes to train on, 0 steps, fewer than one "
                             "sequence of replay.batch_length=8: lower offline.holdout", True),
    ("offline.updates=0", "offline.updates must be > 0, got 0", True),
], ids=["holdout_1", "holdout_negative", "updates_0", "holdout_all", "resumed_holdout_1", "resumed_holdout_all",
        "resumed_updates_0"])
def test_offline_settings_that_cannot_train_are_refused(compose_config, finished, tmp_path, setting, message, resume):
    offline = [*OFFLINE, f"offline.replay={finished / 'run'}", setting]
    if resume:
        run_dir = shutil.copytree(finished / "offline", tmp_path / "offline")
        key = setting.split("=")[0]
        refused(compose_config(*offline, f"resume={run_dir}", f"allow_changes=[{key}]"), run_dir, message, tmp_path)
    else:
        refused(compose_config(*offline), tmp_path / "new", message, tmp_path)


# Case 4: a resumed run's overrides.yaml, and its checkpoint's config, that are not what rssm wrote.
@pytest.mark.parametrize("file, text, message", [
    ("overrides.yaml", "- trainer.steps=200\n- [unclosed\n", "cannot read {run}/overrides.yaml: "),
    ("overrides.yaml", "trainer.steps: 200\n", "cannot read {run}/overrides.yaml: expected a list of overrides "
                                               "(key=value strings), got a dict"),
    ("overrides.yaml", "- trainer.steps=200\n- [1, 2]\n", "cannot read {run}/overrides.yaml: expected a list of "
                                                          "overrides (key=value strings), got a list of list, str"),
    ("overrides.yaml", "", "cannot read {run}/overrides.yaml: expected a list of overrides (key=value strings), got "
                           "a dict"),
    ("overrides.yaml", b"\xff\xfe- x\n", "cannot read {run}/overrides.yaml: "),
    ("checkpoint.pt", ["not", "a", "mapping"], "cannot load checkpoint {run}/checkpoint.pt: its config is a list, not "
                                               "a mapping of the run's settings"),
    ("checkpoint.pt", {"model": {"units": "many"}}, "cannot load checkpoint {run}/checkpoint.pt: its config does not "
                                                    "fit the schema: model.units: Value 'many' of type 'str' could "
                                                    "not be converted to Integer"),
], ids=["bad_yaml", "mapping", "not_strings", "empty", "not_utf8", "config_list", "config_type"])
def test_a_damaged_run_config_is_refused_by_the_command_line(finished, tmp_path, run_cli, file, text, message):
    run_dir = shutil.copytree(finished / "run", tmp_path / "run")
    if file == "checkpoint.pt":
        rewrite_checkpoint(run_dir / CHECKPOINT, lambda state: state.update(
            config=text if isinstance(text, list) else {**state["config"], **text}))
    else:
        (run_dir / file).write_bytes(text if isinstance(text, bytes) else text.encode())
    before = tree(tmp_path)
    proc = run_cli(f"resume={run_dir}", *MORE, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).startswith(f"rssm-train: error: {message.format(run=run_dir)}")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("config, message", [
    ("run", "its config is a str, not a mapping of the run's settings"),
    ({"replay": {"chunk": [32]}}, "its config does not fit the schema: replay.chunk: Value '[32]' of type 'ListConfig' "
                                  "could not be converted to Integer"),
], ids=["str", "list_for_int"])
def test_a_checkpoint_whose_config_the_schema_does_not_take_is_refused(compose_config, finished, tmp_path, config,
                                                                        message):
    run_dir = shutil.copytree(finished / "run", tmp_path / "run")
    rewrite_checkpoint(run_dir / CHECKPOINT, lambda state: state.update(
        config=config if isinstance(config, str) else {**state["config"], **config}))
    refused(compose_config(*RUN, *MORE, f"resume={run_dir}"), run_dir,
            f"cannot load checkpoint {run_dir / CHECKPOINT}: {message}", tmp_path)
