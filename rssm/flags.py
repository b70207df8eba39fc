"""The flags of rssm's own commands (`rssm-eval`, `rssm-dream`, `rssm-plot`): a parser whose errors are one line,
and flag types that refuse what the command cannot use, as the config's checks refuse a bad key."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """argparse's parser, its errors one line (`PROG: error: ...`, status 2) rather than the usage and the error."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def integer(least: int) -> Callable[[str], int]:
    """An int flag's type: an integer >= `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def number(positive: bool = False) -> Callable[[str], float]:
    """A float flag's type: a finite number (with `positive`, > 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise argparse.ArgumentTypeError(f"expected a finite number{' > 0' if positive else ''}, got {text}")
        return value

    parse.__name__ = "number"
    return parse
