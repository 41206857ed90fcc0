"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


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
