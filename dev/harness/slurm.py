"""A real single-node Slurm cluster in a temp dir: its own munged, slurmctld and slurmd.

Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` packages; no systemd, no
cgroups, no accounting database. Everything (config, munge key and socket, state, spool,
logs, pid files) lives under one directory, the daemons are children of this process and are
stopped by their own pids. Clients only need ``SLURM_CONF`` (:attr:`SlurmCluster.env`); the
test sshd hands it to its sessions with ``SetEnv``.

Used by the tests (``tests/support/slurm.py``) and the demo (``dev/demo.py --scheduler slurm``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from pathlib import Path

from harness.processes import terminate_tree
from harness.sshd import free_loopback_port

#: The Debian packages a cluster needs (``apt-get install -y --no-install-recommends ...``).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
#: Seconds the cluster may take to show its node idle (about 1 s measured on 2 busy cores).
START_TIMEOUT = 30.0
#: Seconds between readiness checks.
POLL_INTERVAL = 0.1
#: Seconds to wait for cancelled jobs to leave the node before slurmd is stopped.
DRAIN_TIMEOUT = 30.0
#: The node's CPUs: more than the machine has (``config_overrides``), so that many ``sleep``
#: jobs run at once, as on a real cluster.
DEFAULT_CPUS = 256
#: The one partition's name.
PARTITION = "debug"
#: A partition whose jobs preempt the default partition's.
URGENT_PARTITION = "urgent"


class SlurmError(RuntimeError):
    """The cluster could not be started (the message says what to install or read)."""


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks (empty: a cluster can start)."""
    names = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue", "sacct", "scancel", "sinfo")
    found = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [name for name in names if shutil.which(name, path=found) is None]


class SlurmCluster:
    """
    One Slurm cluster of one node (``localhost``) under ``base_dir``.

    :param base_dir: where everything goes; made searchable by all (munged requires it of
        every directory on its socket's path)
    :param cpus: CPUs the node claims
    :param max_time: the default partition's ``MaxTime`` (minutes, or ``"UNLIMITED"``): a job
        asking for more is refused at submit (``EnforcePartLimits=ALL``), as on most sites
    :param min_job_age: seconds a finished job stays visible to ``squeue``; small values let a
        test see the ``sacct`` fallback
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        cpus: int = DEFAULT_CPUS,
        max_time: str = "60",
        min_job_age: int = 86400,
    ) -> None:
        # slurm.conf values are whitespace-separated: refusing spaces beats quoting rules.
        if any(char.isspace() for char in str(base_dir)):
            raise ValueError(f"base_dir must not contain whitespace: {base_dir!r}")
        self.base_dir = Path(base_dir).resolve()
        self.cpus = cpus
        self.max_time = max_time
        self.min_job_age = min_job_age
        self.user = getpass.getuser()
        self.conf_path = self.base_dir / "slurm.conf"
        self.munge_socket = self.base_dir / "munge" / "munge.socket"
        self.jobcomp_path = self.base_dir / "jobcomp.txt"
        self.partition = PARTITION
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client needs in its environment to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def client_env(self) -> dict[str, str]:
        """This process's environment plus :attr:`env`."""
        return {**os.environ, **self.env}

    # -- start --------------------------------------------------------------

    def start(self) -> None:
        missing = missing_programs()
        if missing:
            raise SlurmError(
                f"Slurm is not installed here (missing: {', '.join(missing)}). Install it with: "
                f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)} (or run dev/setup-env.sh)"
            )
        try:
            self._prepare()
            self._start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf_path)])
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf_path)])
            self._wait_for_idle_node()
        except BaseException:
            # Whatever went wrong (even Ctrl-C), no daemon is left behind.
            self.stop()
            raise

    def _prepare(self) -> None:
        for name in ("munge", "state", "spool", "log"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket whose directories others cannot search (a mktemp dir is 0700).
        for directory in (self.base_dir, self.base_dir / "munge"):
            directory.chmod(0o755)
        key = self.base_dir / "munge" / "munge.key"
        if not key.exists():
            _run(["mungekey", "--create", f"--keyfile={key}"])
            key.chmod(0o600)
        self.conf_path.write_text(self._config())

    def _config(self) -> str:
        d = self.base_dir
        ctld_port, node_port = free_loopback_port(), free_loopback_port()
        lines = [
            "ClusterName=sshjobs",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_port}",
            f"SlurmUser={self.user}",
            f"SlurmdUser={self.user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            # Only loopback: 22.05's slurmctld still binds 0.0.0.0, but nothing else listens wide.
            "CommunicationParameters=NoInAddrAny",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_path}",
            "JobAcctGatherType=jobacct_gather/none",
            # The urgent partition's jobs preempt (cancel) the default one's: PREEMPTED.
            "PreemptType=preempt/partition_prio",
            "PreemptMode=CANCEL",
            "AccountingStorageType=accounting_storage/none",
            f"MinJobAge={self.min_job_age}",
            "ReturnToService=2",
            # A job over a partition's limits is refused by sbatch, not left pending forever.
            "EnforcePartLimits=ALL",
            "SlurmdParameters=config_overrides",
            "SchedulerType=sched/backfill",
            # A cancelled or timed-out job gets SIGTERM, then SIGKILL this many seconds later.
            "KillWait=2",
            "OverTimeLimit=0",
            "MpiDefault=none",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=100000 State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=localhost Default=YES MaxTime={self.max_time} "
            "PriorityTier=1 State=UP",
            f"PartitionName={URGENT_PARTITION} Nodes=localhost PriorityTier=10 State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _start_munge(self) -> None:
        m = self.base_dir / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
                f"--log-file={m / 'munged.log'}",
                "--force",
            ],
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmError(f"munged did not create {self.munge_socket} in {START_TIMEOUT}s")
            time.sleep(POLL_INTERVAL)

    def _spawn(self, name: str, command: list[str]) -> None:
        stdio = (self.base_dir / "log" / f"{name}.stdio").open("ab")
        with stdio:
            self._procs.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=stdio,
                    stderr=stdio,
                    env=self.client_env(),
                    start_new_session=True,
                )
            )

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                logs = self.base_dir / "log"
                raise SlurmError(
                    f"{proc.args[0]} exited with status {proc.returncode}; see {logs} and {self.base_dir / 'munge'}"
                )

    def _wait_for_idle_node(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive()
            state = self.run(["sinfo", "-h", "-N", "-p", self.partition, "-o", "%T"], check=False).strip()
            if state == "idle":
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"the node is {state or 'unknown'!r}, not idle, after {START_TIMEOUT}s")
            time.sleep(POLL_INTERVAL)

    # -- use ----------------------------------------------------------------

    def run(self, command: list[str], check: bool = True, timeout: float = 30.0) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        done = subprocess.run(command, capture_output=True, text=True, env=self.client_env(), timeout=timeout)
        if check and done.returncode != 0:
            raise SlurmError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def job_ids(self) -> list[str]:
        """Every job the cluster knows (finished ones too, until ``MinJobAge``)."""
        return self.run(["squeue", "-h", "-t", "all", "-o", "%i"], check=False).split()

    def job_state(self, job_id: str) -> str:
        """The state ``squeue`` shows for ``job_id`` (``""``: it does not know the job)."""
        return self.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], check=False).strip()

    def node_idle(self) -> bool:
        """The node is up and runs nothing."""
        return (
            self.run(["sinfo", "-h", "-N", "-p", self.partition, "-o", "%T"], check=False).strip() == "idle"
        )

    def jobcomp_text(self) -> str:
        """The job completion log (what ``sacct -c`` reads)."""
        return self.jobcomp_path.read_text() if self.jobcomp_path.exists() else ""

    def active_job_ids(self) -> list[str]:
        """Jobs still pending, running or ending."""
        out = self.run(
            ["squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED", "-o", "%i"],
            check=False,
        )
        return out.split()

    # -- stop ---------------------------------------------------------------

    def cancel_all(self) -> None:
        """scancel every job still active and wait for them to leave the node (bounded)."""
        if not self._procs or any(proc.poll() is not None for proc in self._procs):
            return
        self.run(["scancel", "-u", self.user], check=False)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.active_job_ids() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """Cancel the jobs (slurmd leaves running jobs behind), then stop slurmd, slurmctld, munged."""
        try:
            self.cancel_all()
        finally:
            # Reverse order of start: slurmd, slurmctld, munged; each by its own pid.
            errors: list[BaseException] = []
            for proc in reversed(self._procs):
                try:
                    terminate_tree(proc)
                except Exception as error:
                    errors.append(error)
            self._procs.clear()
            if errors:
                raise errors[0]


#: The Slurm commands whose every call the test login node records.
COUNTED_COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")


class SlurmCallLog:
    """
    A directory of small wrappers, first on the login node's PATH, that record every call of
    a Slurm command (its name and arguments) and then run the real one: how a test counts the
    ``squeue`` calls per tick without trusting the code under test.
    """

    def __init__(self, directory: Path) -> None:
        self.bin_dir = directory / "bin"
        self.log_path = directory / "calls.log"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        for name in COUNTED_COMMANDS:
            real = shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin")
            assert real, f"{name} is not installed"
            wrapper = self.bin_dir / name
            wrapper.write_text(
                f'#!/bin/sh\nprintf \'%s %s\\n\' {name} "$*" >> {self.log_path}\nexec {real} "$@"\n'
            )
            wrapper.chmod(0o755)

    @property
    def path(self) -> str:
        """The PATH for the login node's sessions: the wrappers first."""
        return f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

    def calls(self, name: str) -> list[str]:
        """The arguments of every call of ``name`` so far, in order."""
        prefix = f"{name} "
        return [
            line[len(prefix) :] for line in self.log_path.read_text().splitlines() if line.startswith(prefix)
        ]

    def ids_per_squeue(self) -> list[int]:
        """How many job ids each ``squeue -j`` call asked about."""
        return [
            len(call.split(" -j ")[1].split()[0].split(","))
            for call in self.calls("squeue")
            if " -j " in call
        ]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
