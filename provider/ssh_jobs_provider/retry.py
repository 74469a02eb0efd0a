"""
One retry policy, used by the hooks, the operator and the trigger.

Two immutable objects say everything about retries. A :class:`RetryPolicy` drives a loop that
runs to its end in one call (a connect, a submit, a worker's cleanup, through tenacity); a
:class:`RetryBudget` is what a loop spread over time keeps between its turns (the trigger's
polls of one job, its cleanups, the whole host session's reconnects): each failure returns a
new budget with one more failure in its history, and :meth:`RetryBudget.is_exhausted` decides.

A :class:`RetryPolicy` bundles how many attempts, which failures are tried again (one
classifier, :func:`~ssh_jobs_provider.exceptions.is_retryable`) and the waits between them
(a :class:`BackoffPolicy`). Every retry loop of the provider is built from one, and none of
them is nested in another, so connection attempts never multiply. The one smaller loop inside
an attempt, :data:`CHANNEL_OPEN_POLICY`, re-opens a refused *channel* on the same connection
after short fixed pauses (:data:`CHANNEL_OPEN_RETRY_DELAYS`, under a second in all): sshd
frees a closed session's slot a moment late, and that must not cost a connection. It opens no
connection; a refusal after its last pause fails the attempt like any other connection-level
failure. The login broker, whose one login serves many callers, asks again for a refused
channel a while longer (``login_broker.CHANNEL_REOPEN_POLICY``, a policy bounded in time with
``within``) before it hands a script back unrun.

Retries that fire in lockstep across a fan-out are dropped by ``sshd`` for the same reason
as the first attempt (``MaxStartups``), so every wait is exponential *and* jittered
("equal jitter": half of the exponential step is fixed, half is random). The fixed half
guarantees real spacing between attempts; the random half spreads a fleet of workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from ssh_jobs_provider.exceptions import is_refused_channel, is_retryable

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffPolicy:
    """
    Exponential backoff with equal jitter.

    :param initial: the first wait's upper bound in seconds (its lower bound is half of it)
    :param maximum: cap on any single wait in seconds
    :param multiplier: growth factor between consecutive waits
    """

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the wait after failed attempt number ``attempt`` (1-based)."""
        steps = max(0, attempt - 1)
        # Stop growing once past the cap: large attempt numbers must not overflow a float.
        ceiling = self.initial
        for _ in range(steps):
            ceiling *= self.multiplier
            if ceiling >= self.maximum:
                return self.maximum
        return min(self.maximum, ceiling)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A jittered wait after failed attempt ``attempt``: uniform in [ceiling/2, ceiling]."""
        top = self.ceiling(attempt)
        return top / 2 + (rng or random).uniform(0, top / 2)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Endless sequence of waits, for loops that count their own attempts."""
        attempt = 1
        while True:
            yield self.delay(attempt, rng)
            attempt += 1


#: The policy every retry in this package uses unless a caller passes its own: the first
#: retry waits 1-2 s, then 2-4 s, 4-8 s, ... capped at 15-30 s. Starting at a second or two
#: matters under a fan-out: sooner retries meet an sshd that is still saturated.
DEFAULT_BACKOFF = BackoffPolicy(initial=2.0, maximum=30.0)


@dataclass(frozen=True)
class FixedWaits:
    """
    Waits given one by one, without jitter: for pauses too short to synchronize anything (the
    channel re-open of one connection). Past the last one, the last one again.

    :param waits: the wait after failed attempt 1, 2, ... in seconds
    """

    waits: tuple[float, ...]

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt`` (1-based)."""
        return self.waits[min(max(1, attempt), len(self.waits)) - 1]


#: The waits of a policy or a budget: anything with ``delay(attempt, rng)``.
Waits = BackoffPolicy | FixedWaits


@dataclass(frozen=True)
class RetryPolicy:
    """
    How often to try, what to try again, and how long to wait in between: one immutable object.

    :param attempts: most attempts in all, the first included (at least 1 is always made)
    :param backoff: the waits between attempts
    :param retry_on: which failures are tried again; the others are raised at once
    :param within: once this many seconds have passed since the first attempt began, a failed
        attempt is the last (``None``: the attempts alone bound the loop); the one before may
        still start up to a wait later
    """

    attempts: int = 3
    backoff: Waits = DEFAULT_BACKOFF
    retry_on: Callable[[BaseException], bool] = is_retryable
    within: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attempts", max(1, int(self.attempts)))

    def with_attempts(self, attempts: int) -> RetryPolicy:
        """The same policy with another number of attempts."""
        return replace(self, attempts=attempts)

    def budget(self) -> RetryBudget:
        """This policy as a budget kept between turns: ``attempts - 1`` failures tolerated."""
        return RetryBudget(self.attempts - 1, self.backoff)

    def retrying(self, log: Any = None, what: str = "operation") -> Retrying:
        """
        A tenacity ``Retrying`` for blocking code (the worker side); call it with the attempt.

        :param log: where each retry is announced (``None``: nowhere)
        :param what: what is being tried, for those messages
        """
        return Retrying(**self._tenacity_args(log, what))

    def async_retrying(self, log: Any = None, what: str = "operation") -> AsyncRetrying:
        """A tenacity ``AsyncRetrying`` for asyncio code (the triggerer side); as :meth:`retrying`."""
        return AsyncRetrying(**self._tenacity_args(log, what))

    def _wait(self, state: RetryCallState) -> float:
        return self.backoff.delay(state.attempt_number)

    def _tenacity_args(self, log: Any, what: str) -> dict[str, Any]:
        total = self.attempts

        def before_sleep(state: RetryCallState) -> None:
            if log is None or state.outcome is None or state.next_action is None:
                return
            log.warning(
                "%s failed (attempt %d/%d): %s; retrying in %.1fs",
                what,
                state.attempt_number,
                total,
                state.outcome.exception(),
                state.next_action.sleep,
            )

        stop = stop_after_attempt(total)
        return {
            "stop": stop if self.within is None else stop | stop_after_delay(self.within),
            "wait": self._wait,
            "retry": retry_if_exception(self.retry_on),
            "before_sleep": before_sleep,
            "reraise": True,
        }


#: Failures a budget quotes in its message (the count goes on past them).
HISTORY_KEPT = 5


@dataclass(frozen=True)
class RetryBudget:
    """
    The retries of one thing, kept between its turns as an immutable value: how many failures in
    a row it tolerates, the waits after each, and what failed (the last few, for the message).

    :param tolerated: failures in a row tolerated; one more exhausts it (``math.inf``: never)
    :param backoff: the waits after a failure
    :param failures: failures in a row so far (a success resets them: :meth:`reset`)
    :param history: the last :data:`HISTORY_KEPT` failures, described
    """

    tolerated: float
    backoff: Waits = DEFAULT_BACKOFF
    failures: int = 0
    history: tuple[str, ...] = ()

    def increment(self, error: BaseException | str) -> RetryBudget:
        """The budget after one more failure, ``error``."""
        described = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return replace(self, failures=self.failures + 1, history=(*self.history, described)[-HISTORY_KEPT:])

    def reset(self) -> RetryBudget:
        """The budget after a success: no failure in a row."""
        return replace(self, failures=0, history=()) if self.failures else self

    def is_exhausted(self) -> bool:
        """More failures in a row than tolerated: give up."""
        return self.failures > self.tolerated

    def delay(self, rng: random.Random | None = None) -> float:
        """The jittered wait after the latest failure."""
        return self.backoff.delay(max(1, self.failures), rng)

    def describe(self) -> str:
        """``"3/5"``: failures in a row against those tolerated."""
        return f"{self.failures}/{self.tolerated:g}"


def attempts_made(retrying: Retrying | AsyncRetrying) -> int:
    """How many attempts the last call of ``retrying`` made (read after it returned or raised)."""
    return int(retrying.statistics.get("attempt_number", 0))


#: The connect policy of a hook built with its defaults (``conn_retry_attempts=3``).
DEFAULT_RETRY = RetryPolicy(attempts=3, backoff=DEFAULT_BACKOFF)

#: Waits before re-opening a refused channel on the SAME connection. sshd frees a closed
#: session's slot a moment after the close is processed, so with a low ``MaxSessions`` a
#: channel opened right after the previous one closed can be refused ("no more sessions")
#: although nothing is wrong; a short pause is enough, reconnecting would be wasteful.
CHANNEL_OPEN_RETRY_DELAYS: tuple[float, ...] = (0.05, 0.2, 0.5)


#: Opening one channel: once, then again after each of :data:`CHANNEL_OPEN_RETRY_DELAYS` while
#: the server refuses it; any other failure is the attempt's, raised at once.
CHANNEL_OPEN_POLICY = RetryPolicy(
    attempts=len(CHANNEL_OPEN_RETRY_DELAYS) + 1,
    backoff=FixedWaits(CHANNEL_OPEN_RETRY_DELAYS),
    retry_on=is_refused_channel,
)
