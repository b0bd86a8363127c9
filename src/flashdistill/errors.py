"""The one exception type for bad user input. The CLI turns it into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, key, value or case). The message names what is wrong and where."""


def one_line(err: BaseException) -> str:
    """The message on one line (a parser's or library's message may span several), as the CLI prints it."""
    return " ".join(str(err).split()) or type(err).__name__
