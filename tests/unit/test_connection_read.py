"""
The async hook reads its Airflow connection, extras included, without a blocking call to
Airflow's supervisor on the event loop.

Reading a ``Connection``'s ``extra_dejson`` (and, before Airflow 3.3.2, ``aget_connection``)
tells the supervisor which values to mask, with a blocking call. Made on the event loop while
another, asynchronous call to the supervisor is in flight, it cannot complete: Airflow 3.3
raises ``DeadlockImminentError``, 3.2 blocks the loop for good; Airflow 3.1's triggerer drops
the call, and with it the masks. The tests play the supervisor's end of Airflow's own channels
(a socket pair, Airflow's frames).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from ssh_jobs_provider.hooks.ssh import SSHHookAsync

# Airflow 2.11 has no supervisor between a task (or trigger) and the metadata database: its
# connections are read from the database itself, with no call that could block the loop.
comms = pytest.importorskip(
    "airflow.sdk.execution_time.comms", reason="Airflow 2.11 has no task supervisor to call"
)
task_runner = pytest.importorskip("airflow.sdk.execution_time.task_runner")
msgspec = pytest.importorskip("msgspec")

#: The value of the asynchronous call the stand-in supervisor answers late.
HELD = "held-call"
#: Seconds the supervisor holds that call: the hook reads its connection meanwhile.
HOLD_SECONDS = 1.0
#: Seconds after which a loop that has not finished counts as blocked for good.
BLOCKED_AFTER = 30.0
EXTRAS = {"conn_timeout": 7, "keepalive_interval": 12}


class StandInSupervisor:
    """
    The supervisor's end of a task process's channel: it answers every request in Airflow's
    frame format, the :data:`HELD` one after :data:`HOLD_SECONDS`, and keeps what was asked.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.requests: list[dict[str, Any]] = []
        self.holding = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            header = self._read(4)
            if header is None:
                return
            payload = self._read(int.from_bytes(header, "big"))
            if payload is None:
                return
            frame_id, body = msgspec.msgpack.decode(payload)[:2]
            self.requests.append(body or {})
            if (body or {}).get("value") == HELD:
                self.holding.set()
                threading.Event().wait(HOLD_SECONDS)
            self.sock.sendall(comms._ResponseFrame(id=frame_id).as_bytes())

    def _read(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def masked(self) -> list[Any]:
        return [r.get("value") for r in self.requests if r.get("type") == "MaskSecret"]


@pytest.fixture
def task_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, StandInSupervisor]]:
    """This process as a task process: Airflow's channel to a stand-in supervisor."""
    ours, theirs = socket.socketpair()
    decoder = comms.CommsDecoder(socket=ours)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", decoder, raising=False)
    supervisor = StandInSupervisor(theirs)
    try:
        yield decoder, supervisor
    finally:
        ours.close()
        theirs.close()


def test_the_async_hook_reads_its_connection_while_another_supervisor_call_is_in_flight(
    task_process: tuple[Any, StandInSupervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Two triggers of one host resolve their settings, each while another call is in flight:
    the first reads the connection from Airflow, the second finds it in the hooks' cache.
    """
    decoder, supervisor = task_process
    if not hasattr(decoder, "asend"):
        pytest.skip("Airflow 3.0's task processes make no asynchronous call to the supervisor")
    conn = {"conn_type": "ssh", "host": "203.0.113.9", "login": "jobs", "extra": json.dumps(EXTRAS)}
    monkeypatch.setenv("AIRFLOW_CONN_SSH_EXTRAS", json.dumps(conn))

    async def while_a_call_is_held(read: Callable[[], Awaitable[Any]]) -> Any:
        supervisor.holding.clear()
        held = asyncio.ensure_future(decoder.asend(comms.MaskSecret(value=HELD)))
        await asyncio.sleep(0)
        if held.done() and isinstance(held.exception(), NotImplementedError):
            pytest.skip("Airflow 3.1's task processes make no asynchronous call to the supervisor")
        assert await asyncio.to_thread(supervisor.holding.wait, BLOCKED_AFTER)
        result = await read()
        await held
        return result

    async def two_triggers() -> list[Any]:
        return [
            await while_a_call_is_held(SSHHookAsync(ssh_conn_id="ssh_extras").get_settings),
            await while_a_call_is_held(SSHHookAsync(ssh_conn_id="ssh_extras").get_settings),
        ]

    outcome: dict[str, Any] = {}

    def run_loop() -> None:
        try:
            outcome["settings"] = asyncio.run(two_triggers())
        except BaseException as error:  # DeadlockImminentError is a BaseException
            outcome["error"] = error

    # In a thread of its own: a loop blocked for good must fail the test, not hang it.
    loop_thread = threading.Thread(target=run_loop, daemon=True)
    loop_thread.start()
    loop_thread.join(BLOCKED_AFTER)
    assert not loop_thread.is_alive(), "the event loop is blocked: a blocking supervisor call on it"
    if isinstance(outcome.get("error"), pytest.skip.Exception):
        raise outcome["error"]
    assert "error" not in outcome, repr(outcome.get("error"))
    for settings in outcome["settings"]:
        assert (settings.host, settings.conn_timeout, settings.keepalive_interval) == ("203.0.113.9", 7, 12)
    # The extras were registered for masking with the supervisor, not dropped on the way.
    assert EXTRAS in supervisor.masked()


def test_in_the_triggerer_the_async_hook_registers_the_extras_masks_with_the_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The triggerer's own channel to its supervisor, as each release builds it: Airflow 3.1's
    cannot make a blocking call from the event loop at all (it drops the masks of the extras
    read there), 3.2 and later make it through the portal they give each trigger.
    """
    from airflow.jobs import triggerer_job_runner

    ours, theirs = socket.socketpair()
    supervisor = StandInSupervisor(theirs)
    conn = {"conn_type": "ssh", "host": "203.0.113.9", "login": "jobs", "extra": json.dumps(EXTRAS)}
    monkeypatch.setenv("AIRFLOW_CONN_SSH_EXTRAS", json.dumps(conn))

    async def as_a_trigger() -> Any:
        reader, writer = await asyncio.open_connection(sock=ours)
        decoder = triggerer_job_runner.TriggerCommsDecoder(
            async_writer=writer, async_reader=reader, socket=ours
        )
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", decoder, raising=False)
        if hasattr(decoder, "start_reader"):  # Airflow >= 3.2
            await decoder.start_reader()

        async def trigger_run() -> Any:
            portal = getattr(triggerer_job_runner, "greenback", None)
            if portal is not None:  # Airflow >= 3.2 runs each trigger with a greenback portal
                await portal.ensure_portal()
            return await SSHHookAsync(ssh_conn_id="ssh_extras").get_settings()

        try:
            return await asyncio.wait_for(trigger_run(), BLOCKED_AFTER)
        finally:
            writer.close()

    try:
        settings = asyncio.run(as_a_trigger())
    finally:
        ours.close()
        theirs.close()
    assert (settings.host, settings.conn_timeout, settings.keepalive_interval) == ("203.0.113.9", 7, 12)
    assert EXTRAS in supervisor.masked()
