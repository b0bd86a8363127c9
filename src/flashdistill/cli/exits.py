"""The one place where a command's exceptions become exit codes.

Every command runs through `exit_code`: 0 when it finishes; 2 for bad input (a UserError, or an OSError: a path the
user named cannot be read or written) after one `error: ...` line on stderr, not a traceback; 1 when the input was
fine but the run did not complete its result: training diverged (TrainingDiverged, `error: <what> diverged: ...`),
or an `Incomplete` result (a bench whose judge scored no case of a category: `error: ...`, then `--retry-failed`).
Under torchrun every rank returns the same code and only rank 0 prints. Anything else (KeyboardInterrupt,
SystemExit, a bug's exception) propagates.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from flashdistill.errors import Incomplete, UserError, one_line


def main_rank() -> bool:
    """True outside torchrun and on its rank 0: the process that prints."""
    return os.environ.get("RANK", "0") == "0"


def os_error_line(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    return one_line(f"{where}{err.strerror or err}")


def _say(line: str) -> None:
    if main_rank():
        print(line, file=sys.stderr)


def exit_code(action: Callable[[], object], what: str = "distillation") -> int:
    """Run `action()` and return the command's exit code (see the module docstring); `what` names the training in
    the message of a diverged run."""
    try:
        action()
    except UserError as err:
        _say(f"error: {one_line(err)}")
        return 2
    except OSError as err:  # a path the user named cannot be read or written: still one line, not a traceback
        _say(f"error: {os_error_line(err)}")
        return 2
    except Incomplete as err:
        _say(f"error: {one_line(err)}")
        return 1
    except Exception as err:
        from flashdistill.runtime.resume import TrainingDiverged  # torch: imported only once something failed

        if not isinstance(err, TrainingDiverged):
            raise
        _say(f"error: {what} diverged: {one_line(err)}")
        return 1
    return 0
