"""A loopback TCP proxy that injects network faults between a client and sshd.

It runs its own event loop in a background thread so that synchronous tests and
tests driving their own asyncio loop can both use it, and so that a test's
blocking client call can never starve the proxy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

LOOPBACK = "127.0.0.1"
CHUNK_SIZE = 65536
CONNECT_TIMEOUT = 5.0
CONTROL_TIMEOUT = 5.0
THREAD_JOIN_TIMEOUT = 5.0
# What OpenSSH 9.2 writes before closing a connection past MaxStartups.
SSHD_MAXSTARTUPS_TEXT = b"Exceeded MaxStartups\r\n"


def _require_loopback(host: str) -> None:
    # Fault injection must never reach beyond this machine.
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"FaultProxy only forwards to loopback addresses, not {host!r}")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN, as a crashed peer or a killed NAT entry would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """The two halves of one proxied connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        # Wakes pipes that hold bytes for a blackhole, so a cut link does not linger.
        self.dead = asyncio.Event()

    def reset(self) -> None:
        self.dead.set()
        _reset(self.client)
        _reset(self.upstream)

    def close(self) -> None:
        self.client.close()
        self.upstream.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to a loopback target, with switchable faults.

    Control methods are thread-safe and take effect before they return.
    """

    def __init__(
        self, target_host: str, target_port: int, *, listen_port: int = 0, refuse_payload: bytes = b""
    ) -> None:
        """``refuse_payload`` is written before a refused connection is closed;
        pass ``SSHD_MAXSTARTUPS_TEXT`` to mimic sshd byte for byte (default: bare EOF)."""
        _require_loopback(target_host)
        self.host = LOOPBACK
        self.port = listen_port
        self.target = (target_host, target_port)
        self.refuse_payload = refuse_payload
        self._lock = threading.Lock()
        self._latency = 0.0
        self._refuse_next = 0
        self._refuse_all = False
        self._accepted_total = 0
        self._refused_total = 0
        self._active = 0
        # Owned by the proxy thread's loop; touched only from there.
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="FaultProxy", daemon=True
        )
        self._thread.start()
        started.result(timeout=CONTROL_TIMEOUT)
        return self

    def stop(self) -> None:
        """Close every socket and join the thread. Safe to call repeatedly."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=CONTROL_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=THREAD_JOIN_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("FaultProxy thread did not stop")
        self._thread = self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as error:
            started.set_exception(error)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._on_client, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CONTROL_TIMEOUT)

    # -- controls (any thread) -----------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every forwarded chunk, in both directions, by ``seconds``."""
        with self._lock:
            self._latency = max(0.0, seconds)

    def refuse_new(self, n: int | None) -> None:
        """Accept then immediately close the next ``n`` connections; None means all."""
        if n is None:
            self.refuse_all(True)
            return
        with self._lock:
            self._refuse_next = max(0, n)

    def refuse_all(self, on: bool) -> None:
        """While on, close every new connection before a byte is forwarded."""
        with self._lock:
            self._refuse_all = on

    def cut_all(self) -> None:
        """Reset every current connection on both sides."""
        self._run_in_loop(self._reset_links)

    def blackhole(self, on: bool) -> None:
        """Hold all bytes while on, so peers look dead; they flow again when off.

        Bytes are held rather than dropped, like TCP retransmitting across a
        transient partition; use ``cut_all`` to make the outage final.
        """
        self._run_in_loop(lambda: self._set_flowing(not on))

    @property
    def accepted_total(self) -> int:
        """Every TCP connection the proxy accepted, refused ones included."""
        with self._lock:
            return self._accepted_total

    @property
    def refused_total(self) -> int:
        with self._lock:
            return self._refused_total

    @property
    def active(self) -> int:
        """Connections currently being forwarded."""
        with self._lock:
            return self._active

    def _run_in_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the proxy loop and wait, so the change is in force on return."""
        loop = self._loop
        if loop is None or self._thread is None:
            raise RuntimeError("FaultProxy is not started")

        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=CONTROL_TIMEOUT)

    # -- proxy thread ------------------------------------------------------------

    def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _reset_links(self) -> None:
        for link in list(self._links):
            link.reset()

    def _take_refusal(self) -> bool:
        with self._lock:
            self._accepted_total += 1
            refuse = self._refuse_all or self._refuse_next > 0
            if refuse:
                self._refused_total += 1
                if not self._refuse_all:
                    self._refuse_next -= 1
            return refuse

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._take_refusal():
                await self._refuse(writer)
            else:
                await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        if self.refuse_payload:
            writer.write(self.refuse_payload)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _forward(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(*self.target), CONNECT_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            # Target down: the client sees a reset, as if it had connected there directly.
            _reset(client)
            return
        link = _Link(client, upstream)
        self._track(link, +1)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream, link),
                self._pipe(upstream_reader, client, link),
            )
        finally:
            self._track(link, -1)
            link.close()

    def _track(self, link: _Link, delta: int) -> None:
        if delta > 0:
            self._links.add(link)
        else:
            self._links.discard(link)
        with self._lock:
            self._active += delta

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        """Copy one direction until EOF; the link's lifetime bounds this loop."""
        try:
            while chunk := await src.read(CHUNK_SIZE):
                with self._lock:
                    latency = self._latency
                if latency:
                    await asyncio.sleep(latency)
                # After the latency: bytes still in flight when a partition starts are held too.
                if not await self._hold_while_blackholed(link):
                    return
                dst.write(chunk)
                await dst.drain()
            # Pass the half-close on so the other direction can still finish.
            if not dst.is_closing() and dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            # One broken side dooms the link; resetting ends the other pipe too.
            link.reset()

    async def _hold_while_blackholed(self, link: _Link) -> bool:
        """Wait until bytes may flow; False if the link was cut meanwhile."""
        assert self._flowing is not None
        if self._flowing.is_set():
            return True
        waiters = {asyncio.ensure_future(self._flowing.wait()), asyncio.ensure_future(link.dead.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also on cancellation (stop()), so no orphaned waiter outlives the loop.
            for waiter in waiters:
                waiter.cancel()
        return not link.dead.is_set()
