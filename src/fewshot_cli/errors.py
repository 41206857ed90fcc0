"""Errors that are the user's to fix (the CLI prints them as one line and exits non-zero), and
the stop signal's base class, which the algorithms see too."""


class FewshotError(Exception):
    """A user-facing error (bad config, missing data, not a run directory, ...).

    The message is one line naming the file, key or path, what was expected
    and what was found. ``exit_code`` is the process exit status the CLI uses.
    """

    exit_code: int = 1


class ConfigError(FewshotError):
    """The configuration is invalid (exit status 2, like a usage error)."""

    exit_code = 2


class DataError(FewshotError):
    """A dataset folder is missing or malformed."""


class RunDirError(FewshotError):
    """A path is not a usable run directory, or a checkpoint cannot be read."""


class AgreedError(FewshotError):
    """An error every process of a distributed run raises together (one rank's error,
    shared so that none waits for it); rank 0 prints it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DistributedError(FewshotError):
    """A distributed run's process group failed: a rank died or raised, or a collective
    timed out."""


class InputError(DataError, ValueError):
    """Examples given to a loaded model (``fewshot_cli.load``, ``fewshot predict``) that it
    cannot take: the wrong number of classes, shapes or files."""


class Stopped(Exception):
    """A stop signal (Ctrl-C, SIGTERM) raised where work can stop (the engine's
    ``Interrupted``); not a user error."""


def raise_stop(error: BaseException | None) -> None:
    """Raise the stop signal in ``error``'s chain, if there is one (a compiler wraps what is
    raised while it compiles in its own errors); return otherwise."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Stopped):
            raise error from None
        seen.add(id(error))
        error = (getattr(error, "inner_exception", None) or error.__cause__
                 or error.__context__)


def first_line(error: BaseException) -> str:
    """What an error (a compiler's, say) says first, at most 200 characters, or its type."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
