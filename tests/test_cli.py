"""`rssm-train` as a hydra app: sweepers, user config groups, globs, resuming from the command line, and errors
that hydra or the run directory cause, each one line."""

import hashlib
import itertools
import math
import re
import shlex
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from test_train import read_scalars

from rssm.checkpoint import CHECKPOINT, load_checkpoint
from rssm.cli import one_line, resume_override
from rssm.config import Config, flatten
from rssm.help import EXAMPLES, GROUPS, KEYS, WIDTH, first_clause, key_comments

TINY = ("experiment=debug", "trainer.progress=false", "trainer.steps=110")


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("rssm-train: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def composed(proc) -> dict:
    """The job config `--cfg job` printed."""
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_an_optuna_sweep_maximises_the_final_eval_return(tmp_path, run_cli):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize",
                   "hydra.sweeper.sampler.seed=0", "wm.lr=interval(1e-4,1e-3)", *TINY, f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    returns = {job: read_scalars(sweep / job)["eval/return_mean"][-1] for job in ("0", "1")}
    assert results["best_value"] == pytest.approx(max(returns.values()))  # each trial returned its eval return
    best = max(returns, key=returns.get)
    lr = yaml.safe_load((sweep / best / "config.yaml").read_text())["wm"]["lr"]
    assert 1e-4 <= lr <= 1e-3 and results["best_params"]["wm.lr"] == pytest.approx(lr)


def test_a_users_own_config_group_from_config_dir_and_searchpath(tmp_path, run_cli):
    (tmp_path / "mine" / "env").mkdir(parents=True)
    (tmp_path / "mine" / "env" / "swing.yaml").write_text("# @package _global_\nenv:\n  id: Pendulum-v1\n"
                                                          "agent:\n  gamma: 0.98\n")
    by_dir = run_cli("--config-dir", str(tmp_path / "mine"), "env=swing", "--cfg", "job", cwd=tmp_path)
    by_path = run_cli("env=swing", f"hydra.searchpath=[file://{tmp_path / 'mine'}]", "--cfg", "job", cwd=tmp_path)
    for proc in (by_dir, by_path):
        cfg = composed(proc)
        assert cfg["env"]["id"] == "Pendulum-v1" and cfg["agent"]["gamma"] == 0.98
    run = run_cli("--config-dir", str(tmp_path / "mine"), "env=swing", *TINY, f"hydra.run.dir={tmp_path / 'run'}",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "rssm: Pendulum-v1 on cpu" in run.stdout


def test_a_glob_sweep_over_env_configs(tmp_path, run_cli):
    proc = run_cli("-m", "env=glob(cartpole*,exclude=*pixels)", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sweep" / "0" / "model.pt").exists() and not (tmp_path / "sweep" / "1").exists()


def test_an_env_named_by_id_gets_the_general_defaults(tmp_path, run_cli):
    general, default = Config(), composed(run_cli("--cfg", "job", cwd=tmp_path))
    assert default["model"]["deter"] != general.model.deter  # the default env config, CartPole's, picks its size
    assert default["trainer"]["train_ratio"] != general.trainer.train_ratio  # ... and its train ratio
    for args in (["env.id=Pendulum-v1"], ["env=gym", "env.id=Pendulum-v1"]):
        cfg = composed(run_cli(*args, "--cfg", "job", cwd=tmp_path))
        assert cfg["env"]["id"] == "Pendulum-v1" and cfg["model"]["deter"] == general.model.deter
        assert cfg["trainer"]["train_ratio"] == general.trainer.train_ratio
        assert all(cfg[k] == default[k] for k in ("agent", "wm", "optim"))  # the agent is the algo's, always
    chosen = composed(run_cli("env=cartpole", "env.id=CartPole-v1", "--cfg", "job", cwd=tmp_path))
    assert chosen == default  # an env config chosen by name keeps its settings


@pytest.mark.parametrize("args, message", [
    (["env=nosuch"], "Could not find 'env/nosuch'. Available options in 'env': acrobot, atari, breakout, cartpole, "
                     "cartpole_pixels, dmc, dmc_vision, gym, halfcheetah"),
    (["-m", "wm.lr=interval(1e-4,x)"], "wm.lr=interval(1e-4,x)"),
    (["wm.lr=interval(1e-4,1e-3)"], "Sweep parameters 'wm.lr=interval(1e-4,1e-3)' requires --multirun"),
    (["-m", "hydra/sweeper=nosuch", "seed=1,2"], "Could not find 'hydra/sweeper/nosuch'"),
])
def test_hydras_own_errors_are_one_line_with_status_2(tmp_path, run_cli, args, message):
    proc = run_cli(*args, *TINY, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path)
    assert message in one_error_line(proc)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_one_line_joins_hydras_message():
    text = ("In 'config': Could not find 'model/huge'\n\nAvailable options in 'model':\n\tl\n\tm\nConfig search "
            "path:\n\tprovider=hydra, path=pkg://hydra.conf\n\nSet the environment variable HYDRA_FULL_ERROR=1 for "
            "a complete stack trace.\n")
    assert one_line(text) == "In 'config': Could not find 'model/huge'. Available options in 'model': l, m"
    text = ("Error merging override trainer.steps=abc\nValue 'abc' of type 'str' could not be converted to Integer\n"
            "    full_key: trainer.steps\n    reference_type=TrainerConfig\n    object_type=TrainerConfig\n")
    assert one_line(text) == ("Error merging override trainer.steps=abc. Value 'abc' of type 'str' could not be "
                              "converted to Integer")


def files_of(run_dir) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resume_alone_continues_with_the_runs_own_config(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    first = run_cli(*TINY, "agent=world_model", "wm.lr=5e-4", "model.deter=16", f"hydra.run.dir={run_dir}",
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert yaml.safe_load((run_dir / "overrides.yaml").read_text()) == [
        *TINY, "agent=world_model", "wm.lr=5e-4", "model.deter=16"]

    # Another directory to start from; the run's own config, not the defaults; a change shown as a diff.
    go_on = run_cli("resume=run", "trainer.steps=150", "threads=2", "allow_changes=[trainer.steps]",
                    cwd=tmp_path)
    assert go_on.returncode == 0, go_on.stderr
    assert "rssm: resuming with changes: threads: 1 -> 2; trainer.steps: 110 -> 150\n" in go_on.stdout
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert state["collector"]["env_steps"] == 150 and state["config"]["wm"]["lr"] == 5e-4
    assert state["config"]["model"]["deter"] == 16 and state["config"]["agent"]["kind"] == "world_model"
    assert not (tmp_path / "outputs").exists()  # no empty run directory for a resumed run

    before = files_of(run_dir)
    for args, message in [
        (["wm.lr=1e-3"], "config differs from the run's"),
        (["model.deter=256"], "model.deter: 16 -> 256"),  # back to the default value is a change too
        (["agent=dreamer"], "agent.kind: world_model -> dreamer"),
        (["trainer.stepz=1"], "Key 'stepz' not in 'TrainerConfig'"),
    ]:
        assert message in one_error_line(run_cli(f"resume={run_dir}", *args, cwd=tmp_path)), args
    assert files_of(run_dir) == before
    again = run_cli(f"resume={run_dir}", "trainer.steps=170", "allow_changes=[trainer.steps]", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "trainer.steps: 150 -> 170" in again.stdout and "threads" not in again.stdout  # threads=2 was kept


def test_run_directories_that_cannot_be_used_are_one_line(tmp_path, run_cli):
    (tmp_path / "file").write_text("not a directory")
    cases = [
        ([f"hydra.run.dir={tmp_path / 'file'}"], f"run directory {tmp_path / 'file'} is a file"),
        ([f"hydra.run.dir={tmp_path / 'file' / 'run'}"], f"lies under {tmp_path / 'file'}, which is a file"),
        (["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'file'}"], f"run directory {tmp_path / 'file'} is a file"),
        ([f"resume={tmp_path / 'typo'}"], f"no checkpoint at {tmp_path / 'typo'}"),
    ]
    for args, message in cases:
        assert message in one_error_line(run_cli(*args, *TINY, cwd=tmp_path)), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing was created


def test_a_refused_new_run_leaves_the_existing_run_as_it_was(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    assert run_cli(*TINY, "agent=world_model", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    before = files_of(run_dir)
    line = one_error_line(run_cli(*TINY, "seed=3", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    assert f"{run_dir} already holds a run" in line
    assert files_of(run_dir) == before and not (run_dir / ".hydra").exists()


def test_a_diverged_trial_does_not_end_a_sweep(tmp_path, run_cli):
    proc = run_cli("-m", "agent=world_model", "wm.lr=1e30,1e-4", "trainer.max_nonfinite=2", *TINY,
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "updates in a row had a non-finite loss or gradient" in proc.stderr
    assert not (tmp_path / "sweep" / "0" / "model.pt").exists() and (tmp_path / "sweep" / "1" / "model.pt").exists()
    assert math.isfinite(read_scalars(tmp_path / "sweep" / "1")["loss/wm"][-1])


def test_shell_completion_completes_config_groups_and_keys(tmp_path):
    import subprocess
    import sys

    from conftest import cli_env

    def complete(line: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "rssm", "--shell-completion", "query=bash"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              env={**cli_env(), "COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("rssm-train env=cartp") == ["env=cartpole", "env=cartpole_pixels"]
    assert "trainer.steps=" in complete("rssm-train trainer.st")


def test_configs_come_from_the_source_tree_where_its_rssm_shadows_the_installed_package(monkeypatch):
    import importlib.util

    from rssm.cli import config_source

    assert config_source() == "pkg://rssm.configs"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as from the root of a plain install
    assert (Path(config_source()) / "config.yaml").is_file()


def test_resume_of_a_finished_run_says_so_with_a_command_that_trains_it_longer(tmp_path, run_cli):
    run_dir = tmp_path / "a run"  # quoted in the command
    first = run_cli(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "rssm: finished: 110 env steps" in first.stdout
    before = {k: v for k, v in files_of(run_dir).items() if k != "train.log"}  # the line goes to the log too

    resume = shlex.split(resume_override(run_dir))  # resume='...a run': quoted for hydra
    again = run_cli(*resume, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    line = again.stdout.strip().splitlines()[-1]
    assert line.startswith(f"rssm: resumed from {run_dir / CHECKPOINT} at env step 110: the run is finished "
                           f"(trainer.steps=110), nothing to train; train it longer with: rssm-train ")
    assert {k: v for k, v in files_of(run_dir).items() if k != "train.log"} == before  # nothing to do, nothing done

    command = shlex.split(line.split("with: ", 1)[1])
    assert command == ["rssm-train", *resume, "trainer.steps=220", "allow_changes=[trainer.steps]"]
    longer = run_cli(*command[1:], cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert re.search(r"rssm: finished: 220 env steps, \d+ updates in (\d+m )?\d+s this session;", longer.stdout)
    assert load_checkpoint(run_dir / CHECKPOINT)["progress"]["env_steps"] == 220


def test_help_is_one_page_of_the_groups_the_keys_users_change_and_examples(tmp_path, run_cli):
    proc = run_cli("env=pendulum", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) < 60 and max(map(len, lines)) <= WIDTH
    configs = Path(__file__).parents[1] / "configs"
    for group, description in GROUPS.items():  # each group, what it picks, then its options (wrapped)
        at = lines.index(f"  {group.ljust(10)}  {description}")
        options = " ".join(line.strip() for line in itertools.takewhile(lambda line: line.startswith(" " * 14),
                                                                         lines[at + 1:]))
        assert options.replace("*", "").split(", ") == sorted(p.stem for p in (configs / group).glob("*.yaml"))
    text, comments = proc.stdout, key_comments()
    assert "*pendulum" in text and "*dreamerv3_cpu" in text  # this command line's choices
    for key, value in [("trainer.steps", "20000"), ("env.id", "Pendulum-v1"), ("device", "auto")]:
        assert any(re.fullmatch(rf"  {re.escape(key)}={re.escape(value)} +{re.escape(first_clause(comments[key]))}",
                                line) for line in lines), key
    assert "rssm-train resume=outputs/" in text and 'page "Configuration reference"' in text

    assert "== Flags ==" in run_cli("--hydra-help", cwd=tmp_path).stdout  # hydra's own help stays


def test_help_shows_a_users_own_group_and_every_built_in_one(tmp_path, run_cli):
    (tmp_path / "mine" / "task").mkdir(parents=True)
    (tmp_path / "mine" / "task" / "swing.yaml").write_text("# @package _global_\nenv:\n  id: Pendulum-v1\n")
    proc = run_cli("--config-dir", str(tmp_path / "mine"), "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  task        swing" in proc.stdout.splitlines()
    built_in = {p.name for p in (Path(__file__).parents[1] / "configs").iterdir() if p.is_dir()} - {"hydra"}
    assert built_in == set(GROUPS)  # a group added to configs/ gets its line here


def test_help_keys_are_schema_keys_described_in_the_schema_and_its_examples_compose(compose_config):
    comments = key_comments()
    assert comments["trainer.steps"] == "env steps (agent steps, after action repeat)"  # a trailing comment
    assert comments["precision"].startswith("fp32 | bf16 | fp16: forward passes")  # the lines above the field
    assert comments["model.unimix"] == ""  # none
    assert set(flatten(OmegaConf.to_container(OmegaConf.structured(Config)))) == set(comments)
    assert all(first_clause(comments[k]) for k in KEYS), [k for k in KEYS if not comments[k]]
    assert first_clause("a task, e.g. walker_walk; when set, ...") == "a task, e.g. walker_walk"
    assert first_clause("a b (c d). e", width=5) == "a b"  # a long first clause loses its parentheses
    for example in EXAMPLES:
        words = shlex.split(example)
        assert words[0] == "rssm-train"
        compose_config(*words[1:])


@pytest.mark.parametrize("command", ["rssm.evaluate", "rssm.dream", "rssm.plot"])
def test_every_flag_of_the_other_commands_is_described_with_its_default(command, capsys):
    """rssm-eval, rssm-dream and rssm-plot --help: each argument has a description, and each optional flag says
    its default (or that it is required)."""
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(command).main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    body = text[text.index("positional arguments:"):]
    # each argument's entry: its line, then the lines of its description, indented further
    entries = re.findall(r"^  (\S.*(?:\n {5,}.*)*)", body, flags=re.MULTILINE)
    described = {e.split()[0]: " ".join(e.split()) for e in entries if not e.startswith("-h,")}
    assert len(described) >= 6, described
    for flag, entry in described.items():
        words = entry.split(" ")
        rest = " ".join(w for w in words[1:] if not w.isupper() and w not in ("[RUN", "...]"))
        assert len(rest.split()) >= 3, f"{command} {flag} has no description: {entry}"
        if flag.startswith("--"):
            assert "(default" in entry or "default:" in entry or "(required)" in entry, f"{command} {flag}: {entry}"
