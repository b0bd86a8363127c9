"""The exceptions a command ends with on purpose; the CLI (cli/exits.py) turns each into one line on stderr.

`UserError`: bad input, exit code 2 (fix the command or the file). `Incomplete`: the input was fine and the command
ran, but its result is incomplete for a reason outside it (a judge endpoint down or replying nonsense, so a bench
category has no score): exit code 1, as a diverged training run (runtime/resume.TrainingDiverged) is; running the
same command again (`--retry-failed`, `--resume`) can complete it.
"""


class UserError(Exception):
    """Bad input from the user (file, key, value or case). The message names what is wrong and where."""


class Incomplete(Exception):
    """A run whose result is incomplete through no fault of its input (see the module docstring). The message says
    what is missing and how to complete it."""


def one_line(err: BaseException) -> str:
    """The message on one line (a parser's or library's message may span several), as the CLI prints it."""
    return " ".join(str(err).split()) or type(err).__name__
