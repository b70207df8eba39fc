"""Training from Python: `rssm.train(overrides)` runs in this process what `rssm-train OVERRIDES` runs, and
`rssm.compose(overrides)` gives the config it would run.

    run = rssm.train(["env=cartpole", "trainer.steps=20000"], run_dir="runs/cartpole")
    run = rssm.train({"resume": "runs/cartpole", "trainer.steps": 40000,  # the same run, trained longer
                      "allow_changes": ["trainer.steps"]})
    action, state = run.policy.predict(obs)

The config is composed by hydra from rssm's configs, as the command line composes it (the same groups, keys,
`env.id=...` implying `env=gym`, `hydra.run.dir=...`), and the run is the command line's run: the same checks,
files, loggers, checkpoints and resume, so a run started here continues with `rssm-train resume=RUN_DIR` and the
other way round.
"""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from rssm.cli import config_source, merge_overrides, one_line, register_resolvers, resumed_config, with_general_env
from rssm.config import UserError, register_configs, validate

if TYPE_CHECKING:
    from rssm.api import Loaded

Overrides = Sequence[str] | Mapping[str, Any]


def compose(overrides: Overrides | None = None) -> DictConfig:
    """The config that `rssm-train OVERRIDES` would run, checked as a run checks it: to read, to change, and to
    give to `rssm.train`.

    Args:
        overrides: as on the command line, a list of `key=value` strings (`["env=dmc", "env.task=walker_walk"]`),
            or a dict of them (`{"env": "dmc", "trainer.steps": 20000}`; nested dicts name dotted keys, lists
            and values are written in hydra's override syntax).
    Raises:
        UserError: an unknown group, option or key, a value of the wrong type, or a config a run refuses.
    """
    with _hydra() as composer:
        cfg, _ = composer(override_list(overrides))
    validate(cfg)
    return cfg


def train(overrides: Overrides | DictConfig | None = None, run_dir: str | Path | None = None) -> Loaded:
    """Train a run in this process, as `rssm-train OVERRIDES` does, and return it as `rssm.load` does.

    With `resume=RUN_DIR` among the overrides, the run in RUN_DIR continues from its checkpoint with what the
    other overrides change (a larger `trainer.steps` with `allow_changes=[trainer.steps]` trains it longer). A
    run stopped by Ctrl-C (SIGINT; in a notebook, the interrupt button) or SIGTERM writes its checkpoint first,
    then raises. The run's `threads` setting holds while it trains; torch's thread count is put back afterwards.

    Args:
        overrides: a list of `key=value` strings or a dict of them, as `rssm.compose` takes; or a config that
            `rssm.compose` returned, changed as you like (its run then continues with `resume=` alone, and
            changes given at resume are read against rssm's defaults).
        run_dir: where the run's files go; default: `hydra.run.dir` as the command line's (`outputs/DATE/TIME`
            under the working directory). Not with `resume=`: a run continues in its own directory.
    Returns:
        The trained run (`rssm.api.Loaded`): its config, policy and world model, on the CPU.
    Raises:
        UserError: a config, override or run directory the command line refuses with one line (status 2).
        KeyboardInterrupt: Ctrl-C; the checkpoint is saved, the run continues with `resume=RUN_DIR`.
        RunStopped: SIGTERM (checkpoint saved), envs that kept failing (checkpoint saved) or a diverged model
            (last checkpoint kept).
    """
    import torch

    from rssm.api import load
    from rssm.checkpoint import checkpoint_path
    from rssm.run_state import RunStopped
    from rssm.training import train as train_run

    with _hydra() as composer:
        if isinstance(overrides, DictConfig):
            cfg, given = overrides.copy(), None
            default_dir = composer([f"resume={_value(cfg.get('resume'))}"])[1]
        else:
            given = override_list(overrides)
            cfg, default_dir = composer(given)
        if cfg.resume:
            if run_dir is not None:
                raise UserError(f"run_dir cannot be given with resume={cfg.resume}: a run continues in its own "
                                f"directory")
            cfg, given = resumed_config(cfg, given or [], lambda o: composer(o)[0])
            run_dir = checkpoint_path(cfg.resume).parent
        elif given is not None:
            given = merge_overrides([], given)
    run_dir = Path(run_dir if run_dir is not None else default_dir).expanduser()
    threads = torch.get_num_threads()
    with _run_log(run_dir):
        try:
            train_run(cfg, run_dir, given)
        except RunStopped as e:
            if e.status == 128 + signal.SIGINT:
                raise KeyboardInterrupt(str(e)) from None
            raise
        finally:  # the run's `threads` hold for the run alone: the calling program gets its own count back
            torch.set_num_threads(threads)
    return load(run_dir)


def override_list(overrides: Overrides | None) -> list[str]:
    """Overrides as the command line's strings: a list as it is, a dict as `key=value` in hydra's syntax."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={_value(value)}" for key, value in _dotted(overrides)]
    if isinstance(overrides, str) or not isinstance(overrides, Sequence) \
            or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"overrides must be a list of 'key=value' strings or a dict; got {overrides!r:.80}")
    return list(overrides)


def _dotted(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


_PLAIN = re.compile(r"[A-Za-z_][\w./@%+-]*")  # read back by hydra as the same string
_OTHER_TYPES = {"true", "false", "null", "nan", "inf"}


def _value(value: Any) -> str:
    """A Python value in hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _OTHER_TYPES:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def _hydra() -> Iterator:
    """A composer of rssm's configs, `composer(overrides) -> (config, default run dir)`, with hydra set up for
    it and put back as it was afterwards (the calling program may be a hydra app itself)."""
    register_configs()
    register_resolvers(datetime.now())
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    source = config_source()
    try:
        if source.startswith("pkg://"):
            setup = initialize_config_module(config_module=source.removeprefix("pkg://"), version_base=None)
        else:
            setup = initialize_config_dir(config_dir=source, version_base=None)
        with setup:
            yield _composer
    finally:  # hydra's setup puts back a copy of the GlobalHydra it found: the instance is asked for again
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def _composer(overrides: list[str]) -> tuple[DictConfig, str]:
    try:
        cfg = hydra_compose("config", overrides=with_general_env(overrides), return_hydra_config=True)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    except (HydraException, OmegaConfBaseException) as e:
        causes = [e]
        while causes[-1].__cause__ is not None:  # hydra's "Error merging override ...", then omegaconf's reason
            causes.append(causes[-1].__cause__)
        raise UserError(one_line("\n".join(str(c) for c in causes))) from None
    with read_write(cfg), open_dict(cfg):  # as hydra passes the config to its app: without `hydra`
        del cfg["hydra"]
    return cfg, run_dir


@contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """rssm's status and error lines also in RUN_DIR/train.log with their time, as under `rssm-train` (made at the
    first line, so that a refused run leaves no file)."""
    log = logging.getLogger("rssm")
    handler = _RunLog(run_dir / "train.log", delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


class _RunLog(logging.FileHandler):
    """A log file in a run directory that may not exist yet: lines before the run made it are not written."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not Path(self.baseFilename).parent.is_dir():
            return
        super().emit(record)
