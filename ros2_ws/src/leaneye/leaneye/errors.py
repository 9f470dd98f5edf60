"""User-facing errors: one line that names the file, topic or parameter and what was expected."""


class LeanEyeError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
