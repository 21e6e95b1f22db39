"""The one error type a user can cause: a bad recipe key, value, path or file.

Entry points catch it and print one line naming the culprit, with exit status 2;
every other exception is our bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A user-caused problem; the message names the key, value or path."""
