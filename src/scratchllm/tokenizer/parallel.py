"""An ordered, memory-bounded process map: the one piece of parallelism tokenizer training and encoding share.

`multiprocessing.Pool.imap` reads its whole input ahead of the workers, which for a 10 GB corpus
means 10 GB in memory. `ordered_map` keeps at most `2 * workers` items in flight and yields the
results in input order, so the caller sees the same sequence as a plain loop.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def ordered_map(fn: Callable, items: Iterable, workers: int = 1, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator:
    """Yield fn(item) for each item, in order, computed by `workers` processes (in this one if 1).

    `fn` and `initializer` must be module-level functions so that spawned workers can import them.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    import multiprocessing

    # The pool starts before the first item is read, so no reader thread is alive at fork time.
    pool = multiprocessing.get_context().Pool(workers, initializer=initializer, initargs=initargs)
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= 2 * workers:  # the reader waits for the oldest result
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()
