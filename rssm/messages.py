"""Lines for the person running rssm: on the terminal, and through python's logging (the logger "rssm") in the
run's log, `RUN_DIR/train.log` under rssm-train (configs/hydra/job_logging/rssm.yaml)."""

from __future__ import annotations

import logging
import sys

_LOG = logging.getLogger("rssm")
_LOG.addHandler(logging.NullHandler())  # outside rssm-train it goes nowhere, unless the application configures logging


def status(line: str) -> None:
    """A status line: on stdout, and in the run's log (INFO)."""
    print(line, flush=True)
    _LOG.info(line)


def say(line: str, log: bool = True) -> None:
    """Write one line to stderr in one write (the ranks of a torchrun job share it, and a line written in parts,
    as `print` writes text and newline, can be cut by another rank's), and with `log` to the run's log (WARNING)."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
    if log:
        _LOG.warning(line)


def first_line(error: BaseException, typed: bool = False) -> str:
    """An error's message as one line for the user: its first line, or its type's name when it has none; `typed`:
    after its type's name ("OSError: ..."), for errors from code the user did not write."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}" if typed else text.splitlines()[0]
