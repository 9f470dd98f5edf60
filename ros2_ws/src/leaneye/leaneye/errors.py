"""User-facing errors: one line that names the file, topic or parameter and what was expected."""


class LeanEyeError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class ParameterError(LeanEyeError):
    """A bad value of one parameter of a core function. The core names its own parameter; a command
    re-raises it naming the option that set it (`for_options`), so no CLI flag is written in the core."""

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"{parameter}: {problem}")

    def for_options(self, options: dict[str, str]) -> LeanEyeError:
        """The same error naming `options[parameter]` (e.g. "--fps") instead of the parameter."""
        return LeanEyeError(f"{options.get(self.parameter, self.parameter)}: {self.problem}")


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (or its type's name), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
