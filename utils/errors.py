"""The project's errors: bad input that the CLIs report as one line on stderr with exit code 2, and a
worker that vanished (which the worker pools recover from)."""


class WorldModelsError(Exception):
    """A user-facing error. The message names the bad value and what would be valid."""


class WorkerDied(Exception):
    """A worker process vanished (killed, crashed, its node lost): its state and pending work are gone."""


# How often in a row one piece of work may lose its worker before the run gives up: a worker that
# dies again and again on the same work is a bug, not bad luck.
MAX_RESTARTS = 3
