"""RetryPolicy, the one retry classifier, and how one failed connect attempt is translated."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time

import asyncssh
import paramiko
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.exceptions import (
    SSHAuthenticationError,
    SSHConnectError,
    SSHHostKeyError,
    is_retryable,
    is_transient_connect_error,
)
from ssh_jobs_provider.hooks._errors import gave_up, translated_connect_errors
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.retry import (
    CHANNEL_OPEN_POLICY,
    CHANNEL_OPEN_RETRY_DELAYS,
    DEFAULT_BACKOFF,
    DEFAULT_RETRY,
    HISTORY_KEPT,
    BackoffPolicy,
    FixedWaits,
    RetryBudget,
    RetryPolicy,
    attempts_made,
)

FAST = BackoffPolicy(initial=0.001, maximum=0.002)
SETTINGS = SSHConnectionSettings(conn_id="ssh_x", host="gpu-box", port=22, username="airflow")


def failing(error: Exception):
    def attempt() -> None:
        raise error

    return attempt


# --------------------------------------------------------------------------- the policy object


def test_policy_is_immutable_and_defaults_to_the_one_classifier() -> None:
    assert RetryPolicy(3, DEFAULT_BACKOFF, is_retryable) == DEFAULT_RETRY
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_RETRY.attempts = 5  # type: ignore[misc]
    assert DEFAULT_RETRY.with_attempts(5) == RetryPolicy(5)
    assert DEFAULT_RETRY.attempts == 3


@given(attempts=st.integers(-5, 0))
def test_policy_always_makes_at_least_one_attempt(attempts: int) -> None:
    assert RetryPolicy(attempts).attempts == 1


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_retrying_counts_the_attempts_it_made(attempts: int) -> None:
    retrying = RetryPolicy(attempts, FAST, lambda e: True).retrying()
    with pytest.raises(OSError):
        retrying(failing(OSError("down")))
    assert attempts_made(retrying) == attempts


def test_a_failure_that_is_not_retried_stops_after_one_attempt() -> None:
    retrying = RetryPolicy(5, FAST).retrying()
    with pytest.raises(SSHAuthenticationError):
        retrying(failing(SSHAuthenticationError("denied")))
    assert attempts_made(retrying) == 1


def test_async_retrying_counts_its_attempts() -> None:
    async def lost() -> None:
        raise asyncssh.ConnectionLost("lost")

    retrying = RetryPolicy(3, FAST).async_retrying()
    with pytest.raises(asyncssh.ConnectionLost):
        asyncio.run(retrying(lost))
    assert attempts_made(retrying) == 3


# --------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (SSHConnectError("Could not connect ... after 3 attempt(s)"), False),
        (SSHConnectError("one attempt refused", final=False), True),
        (paramiko.AuthenticationException("Authentication timeout."), True),
        (paramiko.AuthenticationException("Authentication failed."), False),
        (paramiko.SSHException("Error reading SSH protocol banner"), True),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "MaxSessions"), True),
        (TimeoutError(), True),
        (SSHHostKeyError("mismatch"), False),
        (ValueError("bug"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_retryable(error: BaseException, retried: bool) -> None:
    assert is_retryable(error) is retried


def test_only_is_retryable_judges_our_connect_error() -> None:
    # One refused attempt is retried; a final one (its loop's budget is spent) is not. The
    # library classifier does not know our error at all, so no caller has to exclude it again.
    assert is_retryable(SSHConnectError("refused", final=False))
    assert not is_retryable(SSHConnectError("after 5 attempt(s)"))
    assert not is_transient_connect_error(SSHConnectError("refused", final=False))


# --------------------------------------------------------------------------- translation


def translate(error: Exception) -> BaseException:
    with pytest.raises(Exception) as info, translated_connect_errors(SETTINGS):
        raise error
    return info.value


@pytest.mark.parametrize(
    "error",
    [paramiko.AuthenticationException("Authentication failed."), asyncssh.PermissionDenied("denied")],
    ids=["paramiko", "asyncssh"],
)
def test_rejected_credentials_become_one_final_error_for_both_libraries(error: Exception) -> None:
    failure = translate(error)
    assert isinstance(failure, SSHAuthenticationError)
    assert "airflow@gpu-box:22" in str(failure) and "Not retried" in str(failure)
    assert failure.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        paramiko.SSHException("Server 'gpu-box' not found in known_hosts"),
        asyncssh.HostKeyNotVerifiable("Host key is not trusted"),
    ],
    ids=["paramiko", "asyncssh"],
)
def test_unverified_host_keys_name_the_fix_for_both_libraries(error: Exception) -> None:
    failure = translate(error)
    assert isinstance(failure, SSHHostKeyError)
    assert "ssh-keyscan -t ed25519 <host>" in str(failure)


@pytest.mark.parametrize(
    "error",
    [
        paramiko.SSHException("Error reading SSH protocol banner"),
        ConnectionRefusedError(111, "Connection refused"),
        asyncssh.ConnectionLost("Connection lost"),
    ],
    ids=["banner", "refused", "lost"],
)
def test_a_refused_attempt_is_retryable_and_keeps_its_cause(error: Exception) -> None:
    failure = translate(error)
    assert isinstance(failure, SSHConnectError) and not failure.final
    assert is_retryable(failure)
    assert failure.__cause__ is error
    assert type(error).__name__ in str(failure)


def test_an_authentication_timeout_is_a_retryable_refusal() -> None:
    failure = translate(paramiko.AuthenticationException("Authentication timeout."))
    assert isinstance(failure, SSHConnectError) and not failure.final
    assert "Authentication to airflow@gpu-box:22 timed out" in str(failure)


def test_other_errors_pass_unchanged() -> None:
    error = ValueError("Could not load the connection's private_key")
    assert translate(error) is error


def test_giving_up_turns_a_refusal_into_the_final_error_with_the_real_count() -> None:
    refused = translate(paramiko.SSHException("Error reading SSH protocol banner"))
    assert isinstance(refused, SSHConnectError)
    final = gave_up(SETTINGS, refused, 4)
    assert isinstance(final, SSHConnectError) and final.final
    assert str(final).startswith(
        "Could not connect to airflow@gpu-box:22 after 4 attempt(s): SSHException: Error reading SSH protocol banner."
    )
    assert "MaxStartups" in str(final)
    for other in (SSHAuthenticationError("denied"), TimeoutError("reply lost"), final):
        assert gave_up(SETTINGS, other, 4) is other


# --------------------------------------------------------------------------- RetryBudget


@given(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=40))
def test_a_budget_is_exhausted_exactly_past_what_it_tolerates(tolerated: int, failures: int) -> None:
    budget = RetryPolicy(attempts=tolerated + 1).budget()
    for n in range(failures):
        budget = budget.increment(OSError(f"refused {n}"))
    assert budget.failures == failures
    assert budget.is_exhausted() is (failures > tolerated)
    assert budget.describe() == f"{failures}/{tolerated}"
    # Only the last few failures are quoted, the newest last; the count goes on.
    assert budget.history == tuple(f"OSError: refused {n}" for n in range(failures))[-HISTORY_KEPT:]


def test_a_budget_is_a_value_a_success_resets() -> None:
    fresh = RetryBudget(2, BackoffPolicy(initial=1.0, maximum=8.0))
    failed = fresh.increment("lost").increment("lost again")
    assert (fresh.failures, failed.failures) == (0, 2)  # increment returns a new budget
    assert 1.0 <= failed.delay() <= 2.0  # the wait after the second failure
    assert failed.reset() == fresh
    assert RetryBudget(math.inf).increment("x").is_exhausted() is False


def test_fixed_waits_come_one_by_one_then_the_last_again() -> None:
    waits = FixedWaits((0.05, 0.2, 0.5))
    assert [waits.delay(attempt) for attempt in range(1, 6)] == [0.05, 0.2, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "refusal",
    [
        paramiko.ChannelException(1, "Administratively prohibited"),
        asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "MaxSessions"),
    ],
)
def test_a_refused_channel_is_opened_again_after_each_pause_then_the_refusal_is_raised(
    refusal: Exception,
) -> None:
    opens: list[float] = []

    def open_channel() -> None:
        opens.append(time.monotonic())
        raise refusal

    with pytest.raises(type(refusal)):
        CHANNEL_OPEN_POLICY.retrying()(open_channel)
    assert len(opens) == len(CHANNEL_OPEN_RETRY_DELAYS) + 1
    pauses = [later - earlier for earlier, later in itertools.pairwise(opens)]
    assert all(pause >= wait for pause, wait in zip(pauses, CHANNEL_OPEN_RETRY_DELAYS, strict=True))


def test_a_channel_open_fails_at_once_on_anything_but_a_refusal() -> None:
    opens = []

    async def open_channel() -> None:
        opens.append(1)
        raise asyncssh.ConnectionLost("gone")

    with pytest.raises(asyncssh.ConnectionLost):
        asyncio.run(CHANNEL_OPEN_POLICY.async_retrying()(open_channel))
    assert opens == [1]


@pytest.mark.parametrize(("within", "made"), [(None, 4), (0.0, 1)])
def test_a_policy_within_a_time_makes_no_attempt_after_it(within: float | None, made: int) -> None:
    policy = RetryPolicy(attempts=4, backoff=FixedWaits((0.0,)), retry_on=lambda _: True, within=within)
    calls = itertools.count(1)

    def refused() -> None:
        next(calls)
        raise paramiko.ChannelException(1, "refused")

    with pytest.raises(paramiko.ChannelException):
        policy.retrying()(refused)
    assert next(calls) - 1 == made
