"""
Capture what an operator, trigger or hook logs through ``self.log``, on every Airflow release.

Airflow 3.1 and later route ``self.log`` through structlog; 2.11 and 3.0 through the standard
``logging`` module, under a logger named after the class (``...ssh_remote_job.SSHRemoteJobTrigger``,
``airflow.task.operators.<module>.<class>``). :func:`capture_logs` collects both into one list of
structlog-style entries (``event``, ``log_level``, ``logger``), in the order they were logged.
Records of module loggers (``logging.getLogger(__name__)``) are left out on every release, as
structlog's own capture leaves them out on 3.1 and later: tests read those through ``caplog``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

#: Loggers Airflow's logging set-up may keep from propagating to the root logger.
AIRFLOW_PARENT_LOGGERS = ("airflow.task", "airflow.triggers", "airflow")


def is_class_logger(name: str) -> bool:
    """Whether ``name`` is a ``self.log`` logger of one of this provider's classes."""
    last = name.rpartition(".")[2]
    return "ssh_jobs_provider" in name and last[:1].isupper()


class _ClassLogHandler(logging.Handler):
    """Keeps each record of a class logger once (it may reach several of the loggers it is on)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.entries = entries
        self._seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if not is_class_logger(record.name) or id(record) in self._seen:
            return
        self._seen.add(id(record))
        entry: dict[str, Any] = {
            "event": record.getMessage(),
            "log_level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.exc_info:
            entry["exc_info"] = record.exc_info
        self.entries.append(entry)


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Collect the entries logged while the block runs (see the module's docstring)."""
    entries: list[dict[str, Any]] = []
    handler = _ClassLogHandler(entries)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in AIRFLOW_PARENT_LOGGERS)]
    root = logging.getLogger()
    previous_level = root.level
    for logger in loggers:
        logger.addHandler(handler)
    # The class loggers inherit the root's level: let INFO and DEBUG through while capturing.
    root.setLevel(logging.DEBUG)
    try:
        with _structlog_into(entries):
            yield entries
    finally:
        root.setLevel(previous_level)
        for logger in loggers:
            logger.removeHandler(handler)


@contextlib.contextmanager
def _structlog_into(entries: list[dict[str, Any]]) -> Iterator[None]:
    """
    structlog's capture (as ``structlog.testing.capture_logs`` sets it up), appending to
    ``entries``; nothing to do where structlog is absent (Airflow 2.11).
    """
    try:
        import structlog
        from structlog.testing import LogCapture
    except ImportError:
        yield
        return
    capture = LogCapture()
    capture.entries = entries  # type: ignore[assignment]
    # The configured list itself is kept: loggers already bound hold a reference to it.
    processors = structlog.get_config()["processors"]
    previous = processors.copy()
    try:
        processors.clear()
        processors.append(capture)
        structlog.configure(processors=processors)
        yield
    finally:
        processors.clear()
        processors.extend(previous)
        structlog.configure(processors=processors)
