"""
How a trigger's lines of the job's output reach the task log without any going missing. Pure code.

Airflow 3's triggerer writes what a trigger logs in its parent process, after a trip over a
socket that it reads a few KiB per turn of its loop, and it closes a trigger's log file once it
hears the trigger is done. Stalled (a slow metadata database, a loaded machine), it runs seconds
behind, and lines logged in a trigger's last moments can miss the file. So:

* the job's last lines (those of the final read) travel in the trigger's event, and the worker
  that resumes the task writes them (at most :data:`FINAL_LINES_IN_EVENT_BYTES`: the event is
  stored in the database);
* the event waits until the lines logged last are :data:`LOG_WRITE_SECONDS` old, and after it
  the trigger stays (its ``cleanup()``) until they are :data:`LOG_LINGER_SECONDS` old, unless
  the triggerer cancels it first. It does once it has stored the event and the trigger's row is
  gone, a few turns of its loop later: a triggerer that is stalled does none of that, and one
  that merely lags behind its triggers' logs gets those turns to catch up. It is not a
  guarantee: a backlog larger than those turns read can still lose a trigger's last lines.

Airflow 2's triggerer writes a trigger's log in the trigger's own process, in order, so
there is nothing to wait for there (:data:`~ssh_jobs_provider._compat.TRIGGER_LOG_WRITTEN_APART`).

Lines are not held back for the event beyond the final read: a resumed task that Airflow's
scheduler stops before it runs (its race between a trigger's event and the task's state) never
writes what its event carried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ssh_jobs_provider.protocol.last_lines import split_newest
from ssh_jobs_provider.triggers.delivery import Delivery
from ssh_jobs_provider.triggers.watch import LOG_WRITE_SECONDS

#: Most bytes of a job's last lines that the final event carries to the worker (the rest of the
#: final delivery is logged by the trigger): the event is stored in the metadata database.
FINAL_LINES_IN_EVENT_BYTES = 16 * 1024
#: Seconds after its last logged line a trigger that fired stays (in ``cleanup()``, Airflow 3).
#: The task resumes on the event meanwhile; the triggerer cancels the wait a few turns of its
#: loop after it stored the event.
LOG_LINGER_SECONDS = 30.0


def split_final_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """``lines`` as (logged by the trigger, handed over in the event): the newest that fit."""
    return split_newest(lines, FINAL_LINES_IN_EVENT_BYTES)


@dataclass
class LogHandOver:
    """
    One trigger's lines on their way to the task log, with the clock passed in.

    :param handed_over: the lines the final event carries, once it is known
    :param last_logged_at: clock reading when the trigger last logged a line of the job's output
    """

    handed_over: list[str] = field(default_factory=list)
    last_logged_at: float = -math.inf

    def lines_to_log(self, delivery: Delivery, now: float) -> list[str]:
        """The lines of ``delivery`` the trigger logs at ``now``; the rest go in its event."""
        lines = delivery.lines
        if delivery.outcome is not None:
            lines, self.handed_over = split_final_lines(lines)
        if lines:
            self.logged(now)
        return lines

    def logged(self, now: float) -> None:
        """The trigger logged something else at ``now`` (a warning): it counts as a line."""
        self.last_logged_at = now

    def leaving(self) -> list[str]:
        """The lines its event was to carry, for the trigger to log as it leaves without it (cancelled)."""
        lines, self.handed_over = self.handed_over, []
        return lines

    def seconds_before_event(self, now: float) -> float:
        """How long the event waits at ``now``, for the lines logged last to be written."""
        return max(0.0, self.last_logged_at + LOG_WRITE_SECONDS - now)

    def seconds_to_linger(self, now: float) -> float:
        """How long a trigger that fired stays at ``now``, for the same reason, unless cancelled."""
        return max(0.0, self.last_logged_at + LOG_LINGER_SECONDS - now)
