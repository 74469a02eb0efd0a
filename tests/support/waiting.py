"""
Waiting for a condition in a test, bounded in time.

Its own module, free of Airflow: the remote scripts' tests use it, and a test module that never
reaches Airflow runs once, not again on each older release (``support/airflow_reach.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str | Callable[[], object] = "the condition",
    interval: float = 0.05,
) -> None:
    """
    Return as soon as ``predicate()`` is true; fail after ``timeout`` seconds.

    :param what: what was awaited, for the failure message; a callable is called at the
        failure, to show the state that was never reached (e.g. the processes still alive)
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}")
        time.sleep(interval)
