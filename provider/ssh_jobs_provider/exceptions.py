"""Errors raised by this provider, and which low-level SSH errors are worth retrying."""

from __future__ import annotations

import asyncio
import socket

import asyncssh
import paramiko

from ssh_jobs_provider._compat import AirflowException

FAN_OUT_HINT = (
    "When many tasks reach the same host at once, sshd refuses new connections before the "
    "handshake (MaxStartups, default 10:30:100) and refuses extra channels on a connection "
    "(MaxSessions, default 10). Raise conn_retry_attempts, bound concurrency with an Airflow pool "
    "or max_active_tis_per_dag on the mapped task, or raise MaxStartups/MaxSessions in the "
    "server's sshd_config."
)


class SSHJobsError(AirflowException):
    """Base class of this provider's errors."""


class SSHAuthenticationError(SSHJobsError):
    """The server rejected our credentials. Never retried: retrying cannot fix it."""


class SSHHostKeyError(SSHJobsError):
    """The server's host key is unknown or does not match. Never retried."""


class SSHConnectError(SSHJobsError):
    """
    The connection could not be made (refused, dropped before the banner, timed out).

    :param message: what failed and, once ``final``, what to change
    :param final: ``True`` (the default) once a retry loop has spent its budget on this
        connection: nothing retries it again, so budgets never multiply. ``False`` for the
        failure of one attempt that the caller's own loop owns (see :func:`is_retryable`).
    """

    def __init__(self, message: str, *, final: bool = True) -> None:
        super().__init__(message)
        self.final = final


class RemoteJobError(SSHJobsError):
    """The remote job could not be submitted, watched, killed or cleaned up."""


_TRANSIENT_PARAMIKO_WORDS = (
    "banner",
    "eof",
    "connection reset",
    "timeout",
    "timed out",
    "unable to connect",
    "not active",
    "session not active",
    "channel closed",
    "open failed",
    # The key exchange did not finish (paramiko then fails the login with this message).
    "no existing session",
)


def is_auth_timeout(error: BaseException) -> bool:
    """True when authentication did not finish in time: a slow link, not bad credentials."""
    return isinstance(error, paramiko.AuthenticationException) and "timeout" in str(error).lower()


def is_retryable(error: BaseException) -> bool:
    """
    The one rule for what a retry loop of this provider tries again.

    Connection-level failures (:func:`is_transient_connect_error`) and authentication
    timeouts are retried. An :class:`SSHConnectError` is retried only while it stands for ONE
    refused or dropped attempt (``final=False``); once final, the loop that raised it has
    already spent its attempts, and retrying it again would multiply the two budgets.
    """
    if isinstance(error, SSHConnectError):
        return not error.final
    return is_auth_timeout(error) or is_transient_connect_error(error)


def is_transient_connect_error(error: BaseException) -> bool:
    """
    True for connection-level failures that may pass on retry.

    These are what a loaded or restarting sshd produces: EOF before the banner
    (``MaxStartups`` drop), connection refused/reset, banner, handshake or command timeouts,
    a lost connection, and refused channels (``MaxSessions``). Authentication and host-key
    failures are never transient: retrying cannot fix them. This classifies the libraries'
    and the OS's errors only; this provider's own :class:`SSHConnectError` is judged by
    :func:`is_retryable`, the one rule for what is retried, which builds on this.
    """
    if isinstance(error, (SSHAuthenticationError, SSHHostKeyError)):
        return False
    if isinstance(error, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(error, (asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable)):
        return False
    if isinstance(error, (OSError, EOFError, socket.timeout, asyncio.TimeoutError)):
        return True
    if is_refused_channel(error):
        return True  # channel open refused (e.g. MaxSessions)
    if isinstance(error, paramiko.SSHException):
        message = str(error).lower()
        return any(word in message for word in _TRANSIENT_PARAMIKO_WORDS)
    return isinstance(error, (asyncssh.ConnectionLost, asyncssh.DisconnectError))


def is_refused_channel(error: BaseException) -> bool:
    """The server refused to open a channel on a connection that lives on (either library's)."""
    return isinstance(error, (paramiko.ChannelException, asyncssh.ChannelOpenError))
