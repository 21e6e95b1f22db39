"""The error types entry points turn into one line.

``ConfigError``: a user-caused problem (a bad recipe key, value, path or file); one line naming the
culprit, exit status 2.  ``TrainingStopped``: a run that cannot go on (a non-finite loss); one line
naming the step and the last good checkpoint, exit status 1; ``Signalled``, its kind for a run a signal
stopped (SIGTERM, SIGUSR1), exits 128 + the signal's number, as a shell reports a process a signal ended.
Every other exception is our bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A user-caused problem; the message names the key, value or path."""


class TrainingStopped(RuntimeError):
    """Training cannot continue; the message names the step and what was kept."""


class Signalled(TrainingStopped):
    """A run stopped by a signal after saving its checkpoint; the message names the signal, the step and the file."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum
