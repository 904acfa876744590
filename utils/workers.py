"""The worker backend: map a function over items in worker processes, results as they finish.

Stages call `parallel_map` and never touch a pool themselves, so the backend can change (local
processes today) without a stage knowing. Each worker runs `initializer(*initargs)` once, which is
where it builds its expensive state (an environment, models).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any, Callable, Iterator, Optional, Sequence


def default_workers(requested: int) -> int:
    """0 means one worker per CPU core."""
    return requested if requested > 0 else (os.cpu_count() or 1)


def parallel_map(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    initializer: Optional[Callable[..., None]] = None,
    initargs: tuple = (),
) -> Iterator[Any]:
    """Yield `function(item)` for every item, in completion order.

    With one worker (or one item) everything runs in this process: no pickling, no start-up cost,
    and exceptions surface with their full traceback.
    """
    workers = min(default_workers(workers), max(1, len(items)))
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    # forkserver/spawn would re-import torch in each worker (seconds); fork is safe here because
    # workers are started before any thread of ours exists.
    context = mp.get_context("fork")
    pool = context.Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield from pool.imap_unordered(function, items, chunksize=1)
        pool.close()  # workers exit on their own once the queue is drained
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
