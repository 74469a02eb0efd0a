"""
What a failed connect means, for both hooks: the error builders and the one translation.

Each library reports the same few situations in its own way (paramiko's
``AuthenticationException`` and asyncssh's ``PermissionDenied`` are the same rejected
login). :func:`translated_connect_errors` turns one failed connect attempt of either library
into this provider's errors; :func:`gave_up` is what a retry loop raises once its attempts
are used up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncssh
import paramiko

from ssh_jobs_provider import metrics
from ssh_jobs_provider.exceptions import (
    FAN_OUT_HINT,
    SSHAuthenticationError,
    SSHConnectError,
    SSHHostKeyError,
    SSHJobsError,
    is_auth_timeout,
    is_transient_connect_error,
)
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings

INSECURE_WARNING = (
    "Host key verification is disabled for %s: this does not protect against man-in-the-middle attacks."
)
HOST_KEY_FIX = (
    "Pin the server's key with the connection extra 'host_key' (e.g. the output of "
    "`ssh-keyscan -t ed25519 <host>` without the host name), add it to ~/.ssh/known_hosts of the "
    "Airflow user or to a file named by the 'known_hosts' extra, or (insecure) set 'no_host_key_check': true."
)


def _auth_error(settings: SSHConnectionSettings, error: BaseException) -> SSHAuthenticationError:
    return SSHAuthenticationError(
        f"Authentication to {settings.address} failed ({error}). Not retried: check the connection's "
        "login, password, key_file/private_key and private_key_passphrase, the ssh-agent (SSH_AUTH_SOCK), "
        "and the server's authorized_keys."
    )


def _host_key_error(settings: SSHConnectionSettings, error: BaseException) -> SSHHostKeyError:
    return SSHHostKeyError(
        f"Host key of {settings.known_hosts_name} could not be verified ({error}). Not retried. {HOST_KEY_FIX}"
    )


def _key_error(settings: SSHConnectionSettings, error: BaseException) -> SSHAuthenticationError | None:
    """A private key that cannot be used as given (no or wrong passphrase): the fix, or ``None``."""
    which = f"key file {settings.key_file}" if settings.key_file else "connection's private_key"
    text = str(error).lower()
    encrypted = isinstance(error, paramiko.PasswordRequiredException) or (
        isinstance(error, asyncssh.KeyImportError) and "passphrase must be specified" in text
    )
    if encrypted and not settings.private_key_passphrase:
        return SSHAuthenticationError(
            f"The {which} is encrypted: set the connection extra 'private_key_passphrase'. Not retried."
        )
    wrong = isinstance(error, asyncssh.KeyEncryptionError) or (
        type(error) is paramiko.SSHException and text in ("invalid key", "bad decrypt")
    )
    if wrong and settings.private_key_passphrase and (settings.key_file or settings.private_key):
        return SSHAuthenticationError(
            f"The {which} could not be decrypted with the connection extra 'private_key_passphrase' "
            "(wrong passphrase, or a damaged key). Not retried."
        )
    return None


def _exhausted_error(settings: SSHConnectionSettings, attempts: int, error: BaseException) -> SSHConnectError:
    return SSHConnectError(
        f"Could not connect to {settings.address} after {attempts} attempt(s): "
        f"{type(error).__name__}: {error}. {FAN_OUT_HINT}"
    )


def _refused_error(settings: SSHConnectionSettings, reason: BaseException) -> SSHConnectError:
    # One attempt of a loop that goes on: the loop's own final error names the fix.
    refused = SSHConnectError(
        f"Could not connect to {settings.address}: {type(reason).__name__}: {reason}", final=False
    )
    refused.__cause__ = reason
    return refused


def _is_host_key_failure(error: BaseException) -> bool:
    if isinstance(error, (paramiko.BadHostKeyException, asyncssh.HostKeyNotVerifiable)):
        return True
    # paramiko's RejectPolicy: "Server '...' not found in known_hosts".
    return isinstance(error, paramiko.SSHException) and "known_hosts" in str(error)


def _connect_failure(settings: SSHConnectionSettings, error: Exception) -> Exception:
    """What ONE failed connect attempt raises; ``error`` itself when it needs no translation."""
    if isinstance(error, SSHJobsError):
        return error
    key_error = _key_error(settings, error)
    if key_error is not None:
        return key_error
    if is_auth_timeout(error):
        # A slow link, not bad credentials: retried like any other timeout.
        timeout = TimeoutError(f"Authentication to {settings.address} timed out")
        timeout.__cause__ = error
        return _refused_error(settings, timeout)
    if isinstance(error, (paramiko.AuthenticationException, asyncssh.PermissionDenied)):
        return _auth_error(settings, error)
    if type(error) is paramiko.SSHException and "no authentication methods available" in str(error).lower():
        # paramiko had nothing to offer: no key, no password, no agent (asyncssh says PermissionDenied).
        return _auth_error(settings, error)
    if _is_host_key_failure(error):
        return _host_key_error(settings, error)
    if is_transient_connect_error(error):
        return _refused_error(settings, error)
    return error


@contextmanager
def translated_connect_errors(settings: SSHConnectionSettings) -> Iterator[None]:
    """
    Run one connect attempt (of either library) and raise what its failure means here.

    Rejected credentials and host keys become final provider errors; a refused, dropped or
    timed-out attempt becomes an :class:`SSHConnectError` with ``final=False``, which the
    caller's retry loop tries again; anything else (a bug, a bad key file) passes unchanged.

    :param settings: the settings the attempt used, for the messages
    """
    try:
        yield
    except Exception as error:
        failure = _connect_failure(settings, error)
        if isinstance(failure, SSHConnectError) and not failure.final:
            metrics.connect_dropped(settings.host)
        if failure is error:
            raise
        raise failure from failure.__cause__ or error
    metrics.connected(settings.host)


def gave_up(settings: SSHConnectionSettings, error: BaseException, attempts: int) -> BaseException:
    """
    What a retry loop raises after its last attempt failed with ``error``.

    A refused attempt becomes the final :class:`SSHConnectError` naming the attempts made and
    the fix, so that no outer loop retries it again; every other error is raised unchanged.

    :param settings: the settings every attempt used
    :param error: the last attempt's failure
    :param attempts: attempts really made
    """
    if isinstance(error, SSHConnectError) and not error.final:
        return _exhausted_error(settings, attempts, error.__cause__ or error)
    return error
