"""The parser class and argument types every flashdistill command line uses.

`Parser` is argparse's parser with one change: a bad argument ends with a single line `error: PROG: what is wrong`
and exit code 2 (argparse's own prints the whole usage first). The types refuse values that cannot be meant, naming
the value: `--nfe 0`, `--n -1`, `--batch-size 0` or `--cfg nan` end there instead of running silently or failing
deep inside. Subparsers made from a `Parser` are `Parser`s too. `torch_device` accepts only a device this machine
has.
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


def model_text(text: str) -> str:
    """Text for a model (a prompt, an instruction): UTF-8. A byte that is not UTF-8 reaches Python's argv as a lone
    surrogate (surrogateescape), which the tokenizer refuses with a traceback."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else repr(text[err.start])
        raise argparse.ArgumentTypeError(f"not UTF-8 text ({what} at character {err.start + 1})") from None
    return text


def image_size(text: str) -> int | tuple[int, int]:
    """A side (`64`: a square) or HEIGHTxWIDTH (`768x1024`), each at least 1; whether the model takes it is the
    model's to say (a Qwen-Image student takes multiples of 16)."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"must be a side or HEIGHTxWIDTH, got {text!r}")
    sides = [positive_int(part) for part in parts]
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


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


def torch_device(text: str) -> str:
    """An argparse type: a device torch knows (cpu, cuda, cuda:N, mps) that this machine has."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda, cuda:N or mps")
    return text
