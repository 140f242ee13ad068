"""The errors a user can cause and fix: bad data, weights, model files, backups.

Every one derives from `KflowersError`, which imports nothing heavy, so the
command line tells them apart from programming errors without importing
Keras: it prints their message as one line and exits with status 2.
"""


class KflowersError(Exception):
    """Something the user can fix; the message says what and how."""


class DataError(KflowersError, ValueError):
    """A dataset that can't be used; the message says why and what to do."""


class WeightsError(KflowersError, ValueError):
    """Weights or a model file that can't be loaded; the message names the problem."""


class BackupMismatch(KflowersError, ValueError):
    """A backup that belongs to another run (other data, split or arguments)."""
