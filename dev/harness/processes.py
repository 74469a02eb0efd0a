"""Start child processes in their own session and stop exactly those, with everything they forked.

Linux only: descendants are found through ``/proc``, because some of them (sshd's
per-connection children, Airflow's task supervisors) call ``setsid()`` and so leave the
process group we could otherwise signal as a whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

POLL_INTERVAL = 0.02
STOP_TIMEOUT = 10.0

#: A process identified beyond its pid: (pid, start time in clock ticks since boot).
ProcessId = tuple[int, int]


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start_ticks) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def process_id(pid: int) -> ProcessId | None:
    stat = proc_stat(pid)
    return None if stat is None else (pid, stat[2])


def session_id(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[3])


def session_members(sid: int) -> list[ProcessId]:
    """Live processes in session ``sid``.

    Only meaningful for a session we created: while any member lives, the kernel cannot
    hand the number ``sid`` to a new session, so members found here are ours.
    """
    members: list[ProcessId] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and session_id(int(entry.name)) == sid:
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[0] != "Z":
                members.append((int(entry.name), stat[2]))
    return members


def descendants(root_pid: int) -> list[ProcessId]:
    """(pid, start_ticks) of every live descendant of ``root_pid``."""
    children: dict[int, list[ProcessId]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: list[ProcessId] = []
    frontier = [root_pid]
    # Each pid is visited at most once, so this ends after len(children) rounds.
    for _ in range(len(children) + 1):
        if not frontier:
            break
        kids = [kid for parent in frontier for kid in children.get(parent, [])]
        found.extend(kids)
        frontier = [pid for pid, _ in kids]
    return found


def is_same_live_process(pid: int, start_ticks: int) -> bool:
    """Guards against signalling a recycled pid."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] == start_ticks and stat[0] != "Z"


def signal_processes(processes: Sequence[ProcessId], sig: signal.Signals) -> None:
    for pid, start_ticks in processes:
        if is_same_live_process(pid, start_ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def wait_processes_gone(processes: Sequence[ProcessId], timeout: float) -> list[ProcessId]:
    """Return the processes still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        alive = [proc for proc in alive if is_same_live_process(*proc)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return alive


def terminate_tree(
    proc: subprocess.Popen[bytes],
    timeout: float = STOP_TIMEOUT,
    first_signal: signal.Signals = signal.SIGTERM,
    known: Sequence[ProcessId] = (),
) -> None:
    """
    Stop ``proc`` (started with ``start_new_session=True``) and every process it forked.

    ``first_signal`` (SIGTERM; SIGINT for programs that ignore SIGTERM) first, SIGKILL for
    whatever is still alive ``timeout`` seconds later. Safe to call once ``proc`` has exited;
    ``known`` are descendants seen earlier, which may have been orphaned since.
    """
    tree: list[ProcessId] = list(known)
    if proc.poll() is None:
        # Frozen, the root cannot fork a child we would miss in the snapshot.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGSTOP)
        tree += [child for child in descendants(proc.pid) if child not in tree]
        # Still unreaped, so the group id cannot have been recycled.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, first_signal)
            os.kill(proc.pid, signal.SIGCONT)
        signal_processes(tree, first_signal)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    # Children that outlived the root without leaving its session (e.g. after a normal exit).
    stragglers = [member for member in session_members(proc.pid) if member not in tree]
    signal_processes(stragglers, first_signal)
    survivors = wait_processes_gone([*tree, *stragglers], timeout)
    signal_processes(survivors, signal.SIGKILL)
    wait_processes_gone(survivors, timeout)


def kill_tree(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> list[ProcessId]:
    """
    SIGKILL ``proc`` (started with ``start_new_session=True``) and every process it forked, at once.

    A crash, not a shutdown: nothing gets a chance to clean up. The root is frozen first so
    that it cannot fork a child missed by the snapshot; descendants that moved to process
    groups of their own are signalled one by one. Returns what was killed (root first).
    """
    if proc.poll() is not None:
        return []
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    root = process_id(proc.pid)
    tree = descendants(proc.pid)
    # Still unreaped, so the group id cannot have been recycled.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    signal_processes(tree, signal.SIGKILL)
    proc.wait(timeout=timeout)
    wait_processes_gone(tree, timeout)
    return [*([root] if root else []), *tree]


def stop_gracefully(
    procs: Sequence[subprocess.Popen[bytes]], grace: float, timeout: float = STOP_TIMEOUT
) -> None:
    """
    Ask each root to shut down (SIGTERM to it alone), then :func:`terminate_tree` each.

    Programs that manage children (a triggerer and its trigger runner) shut them down in
    order when only the parent is signalled; signalling the whole group at once can leave
    the parent waiting for a child that is already gone. All roots get ``grace`` seconds
    together, so a deployment stops in about the time its slowest part needs.
    """
    snapshots = {proc.pid: descendants(proc.pid) for proc in procs if proc.poll() is None}
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    errors: list[BaseException] = []
    for proc in procs:
        try:
            terminate_tree(proc, timeout, known=snapshots.get(proc.pid, ()))
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


# Runs in the child, then becomes the command (same pid). Unlike Popen's preexec_fn, it is
# safe when this process has threads.
_EXEC_WITH_DEFAULT_STOP_SIGNALS = (
    "import os, signal, sys\n"
    "for sig in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(sig, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def spawn_in_new_session(
    command: Sequence[str],
    *,
    output: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start ``command`` in its own session (so it can be stopped as a group), output to ``output``.

    The command starts with SIGINT and SIGTERM at their default actions even if this process
    ignores them (a shell ignores SIGINT in the jobs it starts in the background): ignored
    signals are inherited, and the stop signals sent later must reach it.
    """
    with output.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_DEFAULT_STOP_SIGNALS, *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def run_bounded(
    command: Sequence[str],
    *,
    timeout: float,
    output: Path,
    env: Mapping[str, str] | None = None,
    first_signal: signal.Signals = signal.SIGTERM,
) -> int | None:
    """
    Run ``command`` in its own session for at most ``timeout`` seconds; output goes to ``output``.

    Return its exit status, or None when it was stopped for taking too long. Either way
    nothing it started is left running.
    """
    proc = spawn_in_new_session(command, output=output, env=env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        terminate_tree(proc, first_signal=first_signal)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised like Ctrl-C so every ``finally`` runs."""


@contextlib.contextmanager
def interrupts_unwind() -> Iterator[None]:
    """
    Make SIGTERM and SIGHUP unwind the stack like Ctrl-C (SIGINT already does).

    Without this a ``kill`` of the driver would skip the clean-up code and leave the
    children, which live in their own sessions, running.
    """

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
