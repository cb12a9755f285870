"""Run calls on a bounded number of threads; the first failure stops the rest.

Why threads: each call is a blocking pipeline (an HTTP stream read by the
store's extraction, which hashes and writes files), the same code `import`
runs; a thread per transfer keeps it one pass without an event loop.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

T = TypeVar("T")


def run_bounded(jobs: int, calls: list[Callable[[], T]],
                abort: threading.Event | None = None) -> list[T]:
    """Results of `calls` in order, at most `jobs` running at once.

    The first exception (or a KeyboardInterrupt while waiting) sets `abort`
    (the calls watch it and stop early), cancels what has not started, waits
    for the running ones, and is raised.  With one job the calls run on the
    caller's thread.
    """
    if jobs <= 1 or len(calls) <= 1:
        out = []
        for call in calls:
            if abort is not None and abort.is_set():
                break
            out.append(call())
        return out
    with ThreadPoolExecutor(max_workers=min(jobs, len(calls)),
                            thread_name_prefix="transfer") as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    raise f.exception()
            return [f.result() for f in futures]
        except BaseException:
            if abort is not None:
                abort.set()
            for f in futures:
                f.cancel()
            wait(futures)
            raise
