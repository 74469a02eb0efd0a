"""
The paramiko side of :class:`~ssh_jobs_provider.hooks.ssh.SSHHook`: settings in, a client out.

Everything here speaks paramiko and nothing else: host-key policy, private key loading,
algorithm lists, one connect attempt, and running one command on a channel. Errors are
left as paramiko raises them; the hook translates them (see :mod:`._errors`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import selectors
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import paramiko

from ssh_jobs_provider.hooks import known_hosts
from ssh_jobs_provider.hooks._errors import INSECURE_WARNING, translated_connect_errors
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.handshake_turns import handshake_turn
from ssh_jobs_provider.hooks.proxy import proxy_command_line
from ssh_jobs_provider.retry import CHANNEL_OPEN_POLICY


class _AcceptAnyHostKey(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key without saving it anywhere (``no_host_key_check``)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


class _AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """``accept-new``: record an unknown host's key (see :mod:`.known_hosts`), refuse a changed one."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        # Known keys of this host were already compared by paramiko (a different one raises
        # BadHostKeyException before we get here); the file may have changed since it was read.
        if not known_hosts.accept_new(self.path, self.name, key.get_name(), key.get_base64()):
            raise paramiko.BadHostKeyException(hostname, key, key)


@dataclass
class ConnectTiming:
    """What one connect took, in seconds: the byte stream (TCP, or through the jump host or the
    proxy command), the first key exchange, and the rest (authentication)."""

    stream: float = 0.0
    kex: float = 0.0
    auth: float = 0.0


class _TimedTransport(paramiko.Transport):
    """A transport that remembers how long its first key exchange took."""

    kex_seconds = 0.0

    def start_client(self, event: Any = None, timeout: float | None = None) -> None:
        started = time.perf_counter()
        super().start_client(event, timeout)
        self.kex_seconds = time.perf_counter() - started


class _JumpedClient(paramiko.SSHClient):
    """A client reached through a jump host: closing it closes the jump host's connection too.
    It also keeps what its connect took (``doctor`` reports it)."""

    jump: paramiko.SSHClient | None = None
    timing: ConnectTiming | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            jump, self.jump = self.jump, None
            if jump is not None:
                jump.close()


def load_pkey(private_key: str, passphrase: str | None) -> paramiko.PKey:
    """The private key from the ``private_key`` extra's text, trying each key type paramiko knows."""
    errors = []
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(private_key), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ValueError(
                "The connection's private_key is encrypted: set the 'private_key_passphrase' extra."
            ) from None
        except paramiko.SSHException as error:
            errors.append(f"{key_class.__name__}: {error}")
    raise ValueError("Could not load the connection's private_key: " + "; ".join(errors))


def disabled_algorithms(settings: SSHConnectionSettings) -> dict[str, list[str]] | None:
    """paramiko's ``disabled_algorithms`` for these settings (``ciphers`` included)."""
    disabled = {key: list(value) for key, value in (settings.disabled_algorithms or {}).items()}
    if settings.ciphers:
        # paramiko only lets us *remove* ciphers before negotiation, so offering exactly the
        # requested ones means disabling every other cipher it knows.
        known = list(paramiko.Transport._preferred_ciphers)  # type: ignore[attr-defined]
        disabled["ciphers"] = sorted(
            set(disabled.get("ciphers", [])) | {c for c in known if c not in settings.ciphers}
        )
    return disabled or None


def set_host_key_policy(client: paramiko.SSHClient, settings: SSHConnectionSettings, log: Any) -> None:
    """Trust exactly what the settings say: a pinned key, known_hosts files, or (insecure) anything."""
    if settings.no_host_key_check or settings.allow_host_key_change:
        log.warning(INSECURE_WARNING, settings.known_hosts_name)
        client.set_missing_host_key_policy(_AcceptAnyHostKey())
        return
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if settings.host_key:
        key_type, blob = settings.host_key.split(" ", 1)
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
        for name in {settings.known_hosts_name, settings.host}:
            client.get_host_keys().add(name, key.get_name(), key)
        return
    client.load_system_host_keys()
    if settings.host_key_policy == "accept-new":
        path = known_hosts.target_file(settings.known_hosts)
        if os.path.exists(path):
            client.get_host_keys().load(path)
        client.set_missing_host_key_policy(_AcceptNewHostKey(path, settings.known_hosts_name))
    elif settings.known_hosts and os.path.isfile(settings.known_hosts):
        # A missing file trusts nothing, as for OpenSSH: the host key error then names the fix.
        client.get_host_keys().load(settings.known_hosts)


def _connect_kwargs(settings: SSHConnectionSettings, sock: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "hostname": settings.host,
        "port": settings.port,
        "sock": sock,
        "username": settings.username,
        "password": settings.password,
        "timeout": max(settings.conn_timeout or 0.0, settings.banner_timeout),
        "banner_timeout": settings.banner_timeout,
        "auth_timeout": settings.auth_timeout,
        "look_for_keys": settings.look_for_keys,
        "compress": settings.compress,
        "disabled_algorithms": disabled_algorithms(settings),
    }
    if settings.key_file:
        kwargs["key_filename"] = settings.key_file
        kwargs["passphrase"] = settings.private_key_passphrase
    if settings.private_key:
        kwargs["pkey"] = load_pkey(settings.private_key, settings.private_key_passphrase)
    return kwargs


def _jump_channel(jump: paramiko.SSHClient, settings: SSHConnectionSettings) -> paramiko.Channel:
    """A ``direct-tcpip`` channel from the jump host to ``settings``' host: the socket to talk SSH over."""
    transport = jump.get_transport()
    assert transport is not None  # just connected
    try:
        return transport.open_channel(
            "direct-tcpip", (settings.host, settings.port), ("127.0.0.1", 0), timeout=settings.conn_timeout
        )
    except paramiko.ChannelException as error:
        # Retried like a refused TCP connect, which is what it is, one hop further.
        raise ConnectionRefusedError(
            f"jump host {settings.proxy_jump.address if settings.proxy_jump else '?'} could not "
            f"connect to {settings.host}:{settings.port} ({error})"
        ) from error


def _open_sock(settings: SSHConnectionSettings, log: Any) -> tuple[Any, paramiko.SSHClient | None]:
    """The byte stream to talk SSH over, and the jump host's client it belongs to (if any)."""
    if settings.proxy_jump is not None:
        # The jump host's own errors name the jump host: translated here, they pass the
        # target's translation unchanged. A chain recurses, one login per hop.
        with translated_connect_errors(settings.proxy_jump):
            jump = connect(settings.proxy_jump, log)
        try:
            return _jump_channel(jump, settings), jump
        except BaseException:
            jump.close()
            raise
    if settings.proxy_command:
        # paramiko's transport sets its own read timeouts on this, as on a socket.
        return paramiko.ProxyCommand(proxy_command_line(settings.proxy_command)), None
    # paramiko applies its `timeout` to the TCP connect AND to the key exchange. Under a
    # fan-out the key exchange of a loaded server can take longer than a sensible connect
    # timeout, so connect the socket ourselves with conn_timeout and give the key exchange
    # the banner budget.
    return socket.create_connection((settings.host, settings.port), timeout=settings.conn_timeout), None


def connect(
    settings: SSHConnectionSettings, log: Any, timing: ConnectTiming | None = None
) -> paramiko.SSHClient:
    """
    ONE connect attempt; paramiko's errors are raised as they are (a jump host's translated).

    :param settings: where and how to connect
    :param log: where the insecure host-key warning goes
    :param timing: filled in with what the connect took, in parts (``doctor`` reports them)
    """
    client = _JumpedClient()
    set_host_key_policy(client, settings, log)
    with contextlib.ExitStack() as turn:
        # A turn among this machine's workers (handshake_turns) from the TCP connect, which
        # sshd already counts against MaxStartups, to the login; through a jump host, from
        # the channel on, the jump host's own login having taken a turn of its own. The wait
        # for a turn is not part of the connect's timing (it counts to the channel's opening
        # through a jump host).
        if settings.proxy_jump is None:
            turn.enter_context(handshake_turn(settings.host, settings.port, settings.handshake_slots))
        started = time.perf_counter()
        sock, client.jump = _open_sock(settings, log)
        if settings.proxy_jump is not None:
            turn.enter_context(handshake_turn(settings.host, settings.port, settings.handshake_slots))
        opened = time.perf_counter()
        try:
            client.connect(**_connect_kwargs(settings, sock), transport_factory=cast(Any, _TimedTransport))
        except BaseException:
            client.close()
            sock.close()
            raise
    transport = client.get_transport()
    kex = transport.kex_seconds if isinstance(transport, _TimedTransport) else 0.0
    client.timing = ConnectTiming(opened - started, kex, max(0.0, time.perf_counter() - opened - kex))
    if transport is not None and settings.keepalive_interval:
        transport.set_keepalive(int(max(1, settings.keepalive_interval)))
    return client


def run_on(
    client: paramiko.SSHClient,
    command: str,
    stdin_data: bytes | None,
    timeout: float | None,
    environment: Mapping[str, str] | None = None,
    get_pty: bool = False,
) -> tuple[int, bytes, bytes]:
    """
    Run ``command`` on one channel of an open client; ``(exit_status, stdout, stderr)``.

    :param client: an open client
    :param command: the command line
    :param stdin_data: bytes sent on stdin, which is then closed (``None``: nothing sent)
    :param timeout: seconds before ``TimeoutError`` (``None``: no limit)
    :param environment: variables sent with the exec request (the server must accept them)
    :param get_pty: request a pseudo-terminal
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    channel = open_channel(client, timeout)
    return run_on_channel(channel, command, stdin_data, deadline, environment, get_pty)


def open_channel(client: paramiko.SSHClient, timeout: float | None) -> paramiko.Channel:
    """A session channel on an open client (nothing runs on the host yet)."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise EOFError("SSH connection is not active")
    return _open_session(transport, timeout)


def run_on_channel(
    channel: paramiko.Channel,
    command: str,
    stdin_data: bytes | None,
    deadline: float | None,
    environment: Mapping[str, str] | None = None,
    get_pty: bool = False,
) -> tuple[int, bytes, bytes]:
    """Run ``command`` on ``channel`` (see :func:`run_on`), closing the channel in the end."""
    try:
        if get_pty:
            channel.get_pty()
        if environment:
            channel.update_environment(dict(environment))
        channel.exec_command(command)
        if stdin_data is not None:
            channel.sendall(stdin_data)
            channel.shutdown_write()
        stdout, stderr = _drain_channel(channel, deadline)
        return channel.recv_exit_status(), stdout, stderr
    finally:
        # Always close the channel, also on errors: a leaked channel counts against
        # the server's MaxSessions for as long as the connection lives.
        channel.close()


def _open_session(transport: paramiko.Transport, timeout: float | None) -> paramiko.Channel:
    """Open a session channel, pausing briefly and retrying when the server refuses it."""
    return CHANNEL_OPEN_POLICY.retrying()(transport.open_session, timeout=timeout)


def _drain_channel(channel: paramiko.Channel, deadline: float | None) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the command has exited and both streams are at EOF."""
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    # A selector, not select.select(): a worker with more than 1024 open files gives the
    # channel's wake-up pipe a descriptor that select() refuses (FD_SETSIZE).
    with selectors.DefaultSelector() as selector:
        selector.register(channel, selectors.EVENT_READ)
        while True:
            progressed = False
            while channel.recv_ready():
                stdout.append(channel.recv(65536))
                progressed = True
            while channel.recv_stderr_ready():
                stderr.append(channel.recv_stderr(65536))
                progressed = True
            buffered = channel.recv_ready() or channel.recv_stderr_ready()
            if not buffered and channel.exit_status_ready() and channel.eof_received:
                return b"".join(stdout), b"".join(stderr)
            if not buffered and channel.closed:
                if not channel.exit_status_ready():
                    raise EOFError("SSH channel closed before the command reported its exit status")
                return b"".join(stdout), b"".join(stderr)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("Remote command did not finish in time")
            if not progressed:
                selector.select(0.05)
