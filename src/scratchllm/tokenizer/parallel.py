"""An ordered, memory-bounded process map: the one piece of parallelism tokenizer training and encoding share.

`multiprocessing.Pool.imap` reads its whole input ahead of the workers, which for a 10 GB corpus
means 10 GB in memory. `ordered_map` keeps at most `2 * workers` items in flight and yields the
results in input order, so the caller sees the same sequence as a plain loop.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from scratchllm.util.errors import UserError


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
    A worker that dies (killed, out of memory) raises UserError instead of leaving the map waiting.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(), initializer=_init_worker,
                               initargs=(initializer, initargs))
    done = False
    try:
        # Start the workers before the first item is read, so no reader thread is alive at fork time.
        try:
            pool.submit(os.getpid).result()
        except BrokenProcessPool:
            raise UserError("the worker processes failed to start; run with --workers 1 to see why") from None
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:  # the reader waits for the oldest result
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        done = True
    except BrokenProcessPool:
        raise UserError("a worker process died (killed, or out of memory); try fewer --workers") from None
    finally:
        # On an error or Ctrl-C the queued items are dropped; running ones finish (each is small).
        pool.shutdown(wait=done, cancel_futures=True)


def _init_worker(initializer: Callable | None, initargs: tuple) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the map, the workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, out of memory) cannot shut the pool down, and its workers would
    # wait for work forever: each leaves once it is orphaned.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
