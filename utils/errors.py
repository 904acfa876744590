"""The project's error type: bad input that the CLIs report as one line on stderr with exit code 2."""


class WorldModelsError(Exception):
    """A user-facing error. The message names the bad value and what would be valid."""
