"""The parser class and argument types every flashdistill command line uses.

`Parser` is argparse's parser with one change: a bad argument ends with a single line `error: PROG: what is wrong`
and exit code 2 (argparse's own prints the whole usage first). The types refuse values that cannot be meant, naming
the value: `--nfe 0`, `--n -1`, `--batch-size 0` or `--cfg nan` end there instead of running silently or failing
deep inside. Subparsers made from a `Parser` are `Parser`s too.
"""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    return _float(text)


def nonneg_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value
