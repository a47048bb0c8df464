"""User-facing errors.

Everything a user can cause (a bad config key, a missing dataset, offline weights, a broken checkpoint) raises a
subclass of :class:`URDError` whose message names the file or key and says how to fix it. The command line prints
that message without a stack trace (``__main__.py``); library users can catch ``URDError``.
"""


class URDError(Exception):
    """Base class of every error that is the user's to fix."""


class ConfigError(URDError):
    """An invalid configuration: unknown key, wrong type, inconsistent options."""


class DataError(URDError):
    """A dataset that is missing, incomplete or unreadable."""


class WeightsError(URDError):
    """Pretrained weights that cannot be obtained (offline, missing file, wrong keys)."""


class CheckpointError(URDError):
    """A checkpoint that is not one of this project's (or the authors'), or is truncated."""


class OutputError(URDError):
    """An output that cannot be written: a folder without permission, or a full disk."""


class DiskFullError(OutputError):
    """No space left on the disk (``ENOSPC``) while writing an output."""
