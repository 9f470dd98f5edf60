"""User-facing errors: one line that names the file, topic or parameter and what was expected."""


class LeanEyeError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (or its type's name), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
