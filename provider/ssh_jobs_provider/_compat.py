"""
Everything this provider uses that differs between the Airflow releases it supports (2.11, 3.0,
3.1, 3.2 and 3.3), in one place: the rest of the package imports it from here.

What a release lacks degrades as the docs' "Airflow versions" table says; none of it is an
import error:

- ``BaseOperator`` is the task SDK's from 3.0 on (2.11: ``airflow.models.baseoperator``), and
  ``BaseHook`` from 3.1 on (2.11 and 3.0: ``airflow.hooks.base``);
- the task exceptions moved to ``airflow.sdk.exceptions`` in 3.2 (before: ``airflow.exceptions``);
  2.11 has no ``TaskDeferralTimeout``: its deferral timeout raises ``TaskDeferralError``, exported
  here under the later name;
- the metrics singleton moved to a shared package in 3.2 (:func:`airflow_stats`);
- reading a connection and its extras on an event loop without a blocking call to the
  supervisor is possible from 3.3.2 on (:func:`aget_connection`, :func:`aextra_dejson`); before,
  the blocking read runs in a worker thread (2.11 has no task SDK at all: its triggerer reads
  the metadata database itself);
- the task state store (3.3) and the trigger's ``on_kill`` (3.3) are looked up where they are
  used (``operators/durable.py``, ``triggers/ssh_remote_job.py``).
- from 3.0 on the triggerer writes a trigger's log in its parent process, after a trip over a
  socket (:data:`TRIGGER_LOG_WRITTEN_APART`); 2.11 writes it in the trigger's own process.
"""

from __future__ import annotations

import importlib
from typing import Any

import airflow

try:  # Airflow >= 3.2: the task SDK owns the exceptions a task raises
    from airflow.sdk.exceptions import (  # type: ignore[attr-defined,unused-ignore]
        AirflowException,
        AirflowSkipException,
        TaskDeferralTimeout,
        TaskDeferred,
    )
except ImportError:  # Airflow 2.11, 3.0, 3.1
    from airflow.exceptions import (  # type: ignore[no-redef,attr-defined,unused-ignore]
        AirflowException,
        AirflowSkipException,
        TaskDeferred,
    )

    try:  # Airflow 3.0, 3.1
        from airflow.exceptions import TaskDeferralTimeout  # type: ignore[no-redef,attr-defined,unused-ignore]
    except ImportError:  # Airflow 2.11: a deferral timeout fails the resumed task with this error
        from airflow.exceptions import (  # type: ignore[no-redef,attr-defined,unused-ignore]
            TaskDeferralError as TaskDeferralTimeout,
        )
try:  # Airflow >= 3.1
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 2.11, 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined,unused-ignore]
try:  # Airflow >= 3.0
    from airflow.sdk import BaseOperator
except ImportError:  # Airflow 2.11
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef,attr-defined,unused-ignore]

#: The triggerer writes what a trigger logs in another process, a moment later (Airflow >= 3.0).
TRIGGER_LOG_WRITTEN_APART = int(airflow.__version__.split(".", 1)[0]) >= 3

__all__ = [
    "TRIGGER_LOG_WRITTEN_APART",
    "AirflowException",
    "AirflowSkipException",
    "BaseHook",
    "BaseOperator",
    "TaskDeferralTimeout",
    "TaskDeferred",
    "aextra_dejson",
    "aget_connection",
    "airflow_stats",
]

#: Where Airflow >= 3.2 keeps its ``Stats`` singleton: the task SDK's copy (workers) and the
#: core's (triggerer, scheduler). Each Airflow process initialises the one it uses.
_STATS_MODULES = (
    "airflow.sdk._shared.observability.metrics.stats",
    "airflow._shared.observability.metrics.stats",
)


def airflow_stats() -> Any:
    """
    The ``Stats`` this process's Airflow component initialised; if none was (a command-line
    tool, a plain script), the task SDK's, initialised from ``[metrics]`` like a worker does.

    Airflow 3.3's is a module of functions, 3.2's a ``Stats`` class in that module; 2.11 to 3.1 have
    one ``Stats`` that initialises itself.
    """
    modules = []
    for name in _STATS_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    for module in modules:
        if getattr(_stats_of(module), "_factory" if _stats_is_module(module) else "factory", None):
            return _stats_of(module)
    if modules:
        from airflow.sdk.observability.metrics import stats_utils

        module = modules[0]
        if _stats_is_module(module):
            from airflow.sdk.configuration import conf

            module.initialize(
                factory=stats_utils.get_stats_factory(),
                export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=False),
            )
            return module
        module.Stats.initialize(factory=stats_utils.get_stats_factory(module.Stats))  # type: ignore[call-arg,unused-ignore]
        return module.Stats
    from airflow.stats import Stats  # Airflow 2.11, 3.0, 3.1

    return Stats


def _stats_is_module(module: Any) -> bool:
    """Whether ``Stats`` is the module's functions (Airflow >= 3.3), not its class ``Stats`` (3.2)."""
    return hasattr(module, "initialize")


def _stats_of(module: Any) -> Any:
    return module if _stats_is_module(module) else module.Stats


def _masks_asynchronously() -> bool:
    """
    Whether Airflow reads a connection on an event loop without a blocking call to the
    supervisor (3.3.2 and later, which added ``Connection.aextra_dejson``).

    ``Connection.extra_dejson`` (every release) and ``BaseHook.aget_connection`` (before 3.3.2)
    register the secrets they read with a blocking call to the supervisor. On the event loop,
    while another asynchronous call is in flight, that call cannot complete: in a task process
    Airflow 3.3 raises ``DeadlockImminentError`` and 3.2 blocks the loop for good; Airflow 3.1's
    triggerer drops the registration.
    """
    try:
        from airflow.sdk.definitions.connection import Connection
    except ImportError:  # Airflow 2.11: no task SDK
        return False
    return hasattr(Connection, "aextra_dejson")


async def aget_connection(conn_id: str) -> Any:
    """
    The Airflow connection ``conn_id``, read without blocking the event loop.

    :param conn_id: the connection id
    :raises airflow.sdk.exceptions.AirflowNotFoundException: no such connection
    """
    if _masks_asynchronously():
        return await BaseHook.aget_connection(conn_id)
    return await _in_worker_thread(BaseHook.get_connection, conn_id)


async def aextra_dejson(conn: Any) -> dict[str, Any]:
    """
    The extras of connection ``conn`` as a dict, read without blocking the event loop.

    :param conn: a connection from :func:`aget_connection`
    """
    reader = getattr(conn, "aextra_dejson", None)
    if reader is not None:
        return dict(await reader())
    return dict(await _in_worker_thread(lambda: conn.extra_dejson))


async def _in_worker_thread(function: Any, *args: Any) -> Any:
    """
    Run the blocking ``function(*args)`` in a worker thread.

    asgiref's thread, not ``asyncio.to_thread``: Airflow 3.1's triggerer answers a blocking
    supervisor call only from a thread asgiref started, by running it on the event loop.
    """
    from asgiref.sync import sync_to_async

    return await sync_to_async(function)(*args)
