"""What `rssm-train` adds to hydra: errors as one line, run directories checked before hydra creates them, the
config of a resumed run, and a general env config for an env named by id. The app itself is `rssm.app`;
`rssm.launch` composes the same config from Python.

Hydra composes the config (so sweepers, `--config-dir`, `hydra.searchpath`, globs and shell completion work as
in any hydra app); rssm validates it inside the task function.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rssm.config import UserError, check_changes, flatten, saved_run_config, validate
from rssm.files import atomic_write, check_run_dir, first_missing
from rssm.help import help_page
from rssm.messages import say

PROG = "rssm-train"
OVERRIDES = "overrides.yaml"  # the run's command-line overrides, beside its config.yaml
# Overrides that say how to continue a run, not what the run is: never part of a run's own overrides.
_RESUME_KEYS = ("resume", "allow_changes")


def write_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str] | None) -> None:
    """The run's config (`config.yaml`) and, where given, its command line's overrides (`overrides.yaml`, which a
    resume composes again), each written whole or not at all."""
    atomic_write(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg).encode()))
    if overrides is not None:
        atomic_write(run_dir / OVERRIDES, lambda f: f.write(OmegaConf.to_yaml(list(overrides)).encode()))


def fail(message: str) -> None:
    """Print one line and exit with status 2: the user's input was at fault, not the program. Not logged: a refused
    run leaves the directory it names as it was (another run's, it may be)."""
    say(f"{PROG}: error: {message}", log=False)
    sys.exit(2)


def config_source() -> str:
    """Where hydra finds the configs: the installed package `rssm.configs`, or, when a source tree's `rssm/`
    shadows the installed package (`python -m rssm` in the repository root after `pip install .`), the
    tree's own `configs/`."""
    if importlib.util.find_spec("rssm.configs") is not None:
        return "pkg://rssm.configs"
    return str(Path(__file__).resolve().parents[1] / "configs")


# Env configs.


_GENERAL_ENVS = {"env.id": "gym", "env.game": "gym", "env.task": "dmc"}  # key -> the env config it implies


def with_general_env(argv: list[str]) -> list[str]:
    """An env named by `env.id` (or `env.game`) without an env config gets `env=gym`, rssm's general defaults,
    rather than the default env config's settings tuned for CartPole; one named by `env.task` gets `env=dmc`.
    (Placed before that override: hydra's options may follow the overrides.)"""
    keys = [a.split("=", 1)[0].lstrip("+~") if "=" in a and not a.startswith("-") else None for a in argv]
    if "env" in keys or not _GENERAL_ENVS.keys() & set(keys):
        return argv
    at = next(i for i, k in enumerate(keys) if k in _GENERAL_ENVS)
    return [*argv[:at], f"env={_GENERAL_ENVS[keys[at]]}", *argv[at:]]


# Hydra's own errors.


class HeldStderr:
    """Hydra composes the config and prepares the run before it calls the task function, and reports a problem
    there (a bad override, an unknown config, an invalid sweep) in several lines with exit status 1. What it
    writes to stderr until the task starts is held back: if hydra exits first, it is printed as one line with
    status 2; otherwise it is passed on unchanged."""

    def __init__(self):
        self.held, self.real, self.started = io.StringIO(), sys.stderr, False

    def __enter__(self) -> HeldStderr:
        sys.stderr = self.held
        return self

    def release(self) -> None:
        """Called when the task starts: stderr is the real one again, with what was held."""
        if sys.stderr is self.held:
            sys.stderr = self.real
            self.real.write(self.held.getvalue())
        self.started = True

    def __exit__(self, kind, error, tb) -> None:
        if sys.stderr is not self.held:
            return
        sys.stderr = self.real
        text = self.held.getvalue()
        failed = kind is SystemExit and error.code not in (0, None)
        if failed and not self.started and text.strip() and "Traceback" not in text:
            fail(one_line(text))
        self.real.write(text)


def one_line(text: str) -> str:
    """Hydra's error message as one line: its sentences joined, lists inlined, the hints about stack traces and
    the config search path dropped."""
    if text.startswith("usage:"):  # argparse's: the usage, then '{prog}: error: ...' as the last line
        return text.strip().splitlines()[-1].split("error: ", 1)[-1]
    parts: list[str] = []
    skip_list = False
    for raw in text.splitlines():
        line = raw.strip()
        indented = raw[:1] in ("\t", " ")
        if not line or line.startswith(("Set the environment variable HYDRA_FULL_ERROR", "full_key:",
                                        "reference_type=", "object_type=")):
            continue
        if line == "Config search path:":
            skip_list = True
            continue
        if indented and parts and parts[-1].endswith(":"):
            parts[-1] += f" {line}"
        elif indented and parts and ":" in parts[-1] and not skip_list:
            parts[-1] += f", {line}"
        elif not (indented and skip_list):
            skip_list = False
            parts.append(line)
    return ". ".join(p.rstrip(".") for p in parts)


# Run directories.


def run_dir_resolver(resume: str, default: str) -> str:
    """`hydra.run.dir`: the resumed run's own directory with `resume=`, else `default`."""
    if not resume:
        return default
    from rssm.checkpoint import CHECKPOINT  # torch: imported once a run starts, not for --help or completion

    path = Path(resume).expanduser()
    return str(path.parent if path.name == CHECKPOINT or path.is_file() else path)


def register_resolvers(start: datetime | None = None) -> None:
    """`rssm_run_dir`; `rssm_now`: the time `start` (default: now, once) in a strftime format, the same in every
    process of a torchrun job and for every part of a run directory's name; `rssm_help`: the page of `--help`."""
    start = start or datetime.now()
    OmegaConf.register_new_resolver("rssm_run_dir", run_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("rssm_now", lambda fmt: start.strftime(fmt), replace=True)
    OmegaConf.register_new_resolver("rssm_help", help_page, replace=True)  # `hydra.help.template`: --help's page


class RunDirCheck(Callback):
    """Checks hydra's output directory before hydra creates it (`hydra.callbacks` in configs/config.yaml), so
    that a bad one is one line, not a traceback. With `resume=`, the directory is the run's own, which must
    hold a checkpoint: a mistyped path is not created."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, config.hydra.sweep.dir)

    @staticmethod
    def _check(config: DictConfig, directory: str) -> None:
        from rssm.checkpoint import checkpoint_path

        try:
            if config.get("resume"):
                checkpoint_path(config.resume)
            check_run_dir(Path(directory))
        except UserError as e:
            sys.stderr = sys.__stderr__  # hydra has not started the task: nothing else is held
            fail(str(e))
        # Hydra makes the directory next: a run refused inside the task removes what was made (`made_dir`).
        made = first_missing(Path(directory))
        if made is None or config.get("resume"):
            os.environ.pop(_MADE, None)
        else:
            os.environ[_MADE] = str(made)


_MADE = "RSSM_MADE_DIR"  # set by RunDirCheck for the task of the same process: the folder hydra is about to make


def made_dir(run_dir: Path) -> Path | None:
    """The highest folder of `run_dir` that this process made, or is about to make (hydra makes a run's directory
    before the task starts): what a refused run removes again. None: the directory was there before."""
    told = os.environ.get(_MADE)
    if told and (Path(told) == Path(run_dir).absolute() or Path(told) in Path(run_dir).absolute().parents):
        return Path(told)
    return first_missing(run_dir)


# Resuming.


def resume_override(run_dir: Path) -> str:
    """`resume=RUN_DIR` as one shell word that hydra parses back to the path, whatever it holds: a path with
    characters that mean something to hydra's override grammar (commas, brackets, quotes, `=`, spaces) or to the
    shell is quoted for hydra, then for the shell."""
    path = str(run_dir)
    if _PLAIN.fullmatch(path):
        return f"resume={path}"
    quoted = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), path)
    word = f"resume='{quoted}'"
    return shlex.quote(word) if re.search(r'["$`\\!]', word) else f'"{word}"'


_PLAIN = re.compile(r"[\w./+@%-]+")  # read as they are by the shell and by hydra


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """`saved` then `new` overrides, one per key (the last), without the keys that only say how to resume."""
    merged = {_key(o): o for o in [*saved, *new] if _key(o) not in _RESUME_KEYS}
    return list(merged.values())


def resumed_config(cfg: DictConfig, overrides: list[str], compose) -> tuple[DictConfig, list[str]]:
    """The config to continue the run `cfg.resume` with: the run's own config (from its checkpoint) with what
    `overrides` (the command line's) change in it. `compose(overrides)` composes a config as hydra does.

    What the command line changes is found by composing the run's saved overrides with and without it: the keys
    whose value differs, and the keys it names. Returns the config and the run's overrides from now on (the
    training loop says what changed). Raises UserError if a change is neither free nor allowed."""
    from rssm.checkpoint import checkpoint_path, load_checkpoint

    path = checkpoint_path(cfg.resume)
    state = load_checkpoint(path, mmap=True)  # its config only: the weights and replay tail stay on disk
    if "config" not in state:
        raise UserError(f"cannot load checkpoint {path}: it lacks config")
    saved_config = state.pop("config")
    del state
    base = saved_run_config(saved_config)  # which `load_checkpoint` found the schema to take
    file = path.parent / OVERRIDES  # written by `write_run_config`: a list of override strings
    try:
        saved = OmegaConf.to_container(OmegaConf.load(file)) if file.exists() else []
    except Exception as e:  # noqa: BLE001 - the file system's, yaml's and omegaconf's errors
        raise UserError(f"cannot read {file}: {one_line(str(e)) or type(e).__name__}") from None
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        kinds = sorted({type(o).__name__ for o in saved}) if isinstance(saved, list) else []
        got = f"a list of {', '.join(kinds)}" if kinds else f"a {type(saved).__name__}"
        raise UserError(f"cannot read {file}: expected a list of overrides (key=value strings), got {got}")
    given = [o for o in overrides if _key(o) not in _RESUME_KEYS]
    try:
        old = flatten(OmegaConf.to_container(compose(merge_overrides(saved, [])), resolve=True))
        new = flatten(OmegaConf.to_container(compose(merge_overrides(saved, given)), resolve=True))
    except Exception as e:  # noqa: BLE001 - hydra's and omegaconf's composition errors
        raise UserError(f"cannot compose the overrides of {path.parent} with the command line's: "
                        f"{one_line(str(e))}") from None
    named = {_key(o) for o in given if "=" in o}
    touched = {k: v for k, v in new.items() if k in named or old.get(k, _ABSENT) != v}
    for key, value in touched.items():
        OmegaConf.update(base, key, value, force_add=True)
    base.resume, base.allow_changes = cfg.resume, list(cfg.allow_changes)
    validate(base)
    check_changes(saved_config, base, path)
    return base, merge_overrides(saved, given)


_ABSENT = object()
