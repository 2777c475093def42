"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero (no traceback)."""


class BrainAlignError(Exception):
    """Bad input or an unmet precondition a user can fix. The message names the file, key or shape."""

    exit_code = 2


class ConfigError(BrainAlignError):
    """A config key is unknown, of the wrong type, or points at something missing."""


class DataError(BrainAlignError):
    """An input file is missing, corrupt, or disagrees with the others (lengths, spaces, NaNs)."""
