"""
What one remote job is, as typed values: the operator renders a :class:`JobSpec`, the trigger
is built from (and serializes) a :class:`WatchSpec`, and the durable logic reads both.

Every argument is validated here, once, with an error that names it: the operator's
constructor checks what is known when the DAG is parsed, :meth:`JobSpec.render` what is known
only once the templates are rendered, and :class:`WatchSpec` what a trigger is handed (also
when the triggerer re-creates it from its stored arguments). Pure code: no Airflow, no I/O.
"""

from __future__ import annotations

import enum
import json
import posixpath
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from ssh_jobs_provider.protocol.environment import normalise_environment
from ssh_jobs_provider.protocol.identity import (
    DEFAULT_BASE_DIR,
    RemoteJobPaths,
    validate_base_dir,
    validate_token,
    validate_working_dir,
)
from ssh_jobs_provider.protocol.last_lines import validate_line_count
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.slurm_options import SlurmSpec, validate_scheduler


class CleanupPolicy(str, enum.Enum):
    """When the job directory is removed once the job ended and its log was read."""

    NEVER = "never"
    ON_SUCCESS = "on_success"
    ALWAYS = "always"

    @classmethod
    def parse(cls, value: str, name: str = "cleanup") -> CleanupPolicy:
        """The policy ``value`` names, or ``ValueError`` naming the argument and the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = tuple(policy.value for policy in cls)
            raise ValueError(f"{name} must be one of {choices}, got {value!r}.") from None

    def removes(self, succeeded: bool) -> bool:
        """Whether a job that ended (``succeeded`` or not) has its directory removed."""
        return self is CleanupPolicy.ALWAYS or (self is CleanupPolicy.ON_SUCCESS and succeeded)


class SubmitFrom(str, enum.Enum):
    """Where the job is submitted: over the worker's own connection or the triggerer's shared one."""

    WORKER = "worker"
    TRIGGERER = "triggerer"

    @classmethod
    def parse(cls, value: str) -> SubmitFrom:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"submit_from must be 'worker' or 'triggerer', got {value!r}: 'worker' submits over a "
                "connection of the worker's own, 'triggerer' over the triggerer's shared connection."
            ) from None


# --------------------------------------------------------------------------- argument checks


def exit_codes(value: int | Container[int] | None) -> Container[int]:
    """``skip_on_exit_code`` as a collection, or ``ValueError`` naming the argument."""
    if value is None:
        return ()
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, Container)):
        raise ValueError(f"skip_on_exit_code must be an int or a collection of ints, got {value!r}.")
    return (value,) if isinstance(value, int) else value


def require_positive(name: str, value: float, minimum: float = 0.0, strict: bool = True) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a number above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if (strict and value <= minimum) or (not strict and value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}.")


def check_remote_os(remote_os: str) -> None:
    """Only POSIX hosts are supported: say so for anything else."""
    if remote_os == "windows":
        raise ValueError(
            "remote_os='windows' is not supported by SSHRemoteJobOperator of ssh_jobs_provider: "
            "only POSIX hosts are. Use remote_os='posix' or 'auto' with a POSIX host."
        )
    if remote_os not in ("auto", "posix"):
        raise ValueError(f"remote_os must be 'auto' or 'posix', got {remote_os!r}.")


#: Most bytes of command and environment together, as JSON, that a trigger may carry to the
#: triggerer: they are stored in the trigger's row of the metadata database, as JSON, or
#: Fernet-encrypted and base64-encoded (4/3 larger), where a MySQL TEXT holds 64 KiB.
MAX_TRIGGER_SUBMIT_BYTES = 40_000


def check_scheduler(scheduler: str | None, scheduler_options: object) -> None:
    """``scheduler`` is known, and ``scheduler_options`` come only with one."""
    validate_scheduler(scheduler)
    if scheduler_options is not None and scheduler is None:
        raise ValueError(
            "scheduler_options are sbatch options: they need scheduler='slurm' (the default, None, runs the "
            "command detached on the host)."
        )


def slurm_spec(scheduler: str | None, options: Mapping[str, Any] | None) -> SlurmSpec | None:
    """The validated sbatch options of a Slurm job (``None`` for a detached one)."""
    check_scheduler(scheduler, options)
    return SlurmSpec.from_options(options) if scheduler == "slurm" else None


# --------------------------------------------------------------------------- the trigger's submit


@dataclass(frozen=True)
class TriggerSubmit:
    """The job a trigger submits itself (``submit_from="triggerer"``): stored with the trigger."""

    command: str
    environment: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None

    def __post_init__(self) -> None:
        size = len(json.dumps({"command": self.command, "environment": dict(self.environment)}).encode())
        if size > MAX_TRIGGER_SUBMIT_BYTES:
            raise ValueError(
                f"SSHRemoteJobOperator: command and environment hold {size} bytes as stored, more than the "
                f"{MAX_TRIGGER_SUBMIT_BYTES} that submit_from='triggerer' can carry (they are stored with the "
                "trigger in the metadata database). Put the long part in a script file on the host and run "
                "that, or use submit_from='worker'."
            )

    @classmethod
    def from_value(cls, value: Mapping[str, Any] | None) -> TriggerSubmit | None:
        """The submit a trigger's ``submit`` argument holds (``None``: the worker submitted)."""
        if value is None:
            return None
        unknown = set(value) - {"command", "environment", "working_dir"}
        if unknown or not isinstance(value.get("command"), str):
            raise ValueError(f"Invalid submit for SSHRemoteJobTrigger: keys {sorted(value)}.")
        return cls(
            value["command"], normalise_environment(value.get("environment")), value.get("working_dir")
        )

    def to_value(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "environment": dict(self.environment),
            "working_dir": self.working_dir,
        }

    def files(self, token: str) -> tuple[tuple[str, str], ...]:
        """The job files this submit writes (what the triggerer's batch sends)."""
        return job_files(self.command, dict(self.environment), self.working_dir, token)


# --------------------------------------------------------------------------- the trigger's arguments


@dataclass(frozen=True)
class WatchSpec:
    """
    Everything :class:`~ssh_jobs_provider.triggers.ssh_remote_job.SSHRemoteJobTrigger` is built
    from and serializes: its arguments, validated (see the trigger for each one's meaning).
    """

    ssh_conn_id: str
    remote_host: str | None
    job_id: str
    job_dir: str
    log_file: str
    exit_code_file: str
    remote_os: str = "posix"
    poll_interval: float = 5
    log_chunk_size: int = 65536
    log_offset: int = 0
    command_timeout: float = 30.0
    max_reconnect_attempts: int = 5
    cleanup_policy: CleanupPolicy = CleanupPolicy.NEVER
    cleanup_retries: int = 3
    job_token: str = ""
    remote_base_dir: str | None = None
    submit: TriggerSubmit | None = None
    from_start: bool = False
    resume_after: int = 0
    scheduler: str | None = None
    scheduler_options: Mapping[str, Any] | None = None
    return_last_lines: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cleanup_policy", CleanupPolicy.parse(self.cleanup_policy, "cleanup_policy"))
        # Validated here too, where the trigger is made: bad sbatch options never reach a batch.
        slurm_spec(self.scheduler, self.scheduler_options)
        validate_line_count(self.return_last_lines)
        if not isinstance(self.resume_after, int) or self.resume_after < 0:
            raise ValueError(f"resume_after must be a byte count (0 or more), not {self.resume_after!r}.")
        validate_token(self.job_token, required=self.submit is not None)
        # The trigger's own guard: whatever its arguments say, it only ever touches a direct
        # child of the base dir, and only the one named after its job.
        paths = self.paths
        if paths.job_id != self.job_id:
            raise ValueError(
                f"Refusing job directory {self.job_dir!r}: it is not named after job {self.job_id!r}."
            )

    @property
    def slurm(self) -> SlurmSpec | None:
        """How the job goes through Slurm (``None``: a detached process)."""
        return slurm_spec(self.scheduler, self.scheduler_options)

    @property
    def paths(self) -> RemoteJobPaths:
        base_dir = self.remote_base_dir or posixpath.dirname(self.job_dir.rstrip("/"))
        return RemoteJobPaths.from_job_dir(self.job_dir, base_dir)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> WatchSpec:
        """The spec of a trigger's keyword arguments (as :meth:`as_kwargs` gives them)."""
        return cls(**{**kwargs, "submit": TriggerSubmit.from_value(kwargs.get("submit"))})

    def as_kwargs(self) -> dict[str, Any]:
        """The trigger's keyword arguments, as plain JSON values (what the triggerer stores)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["cleanup_policy"] = self.cleanup_policy.value
        values["submit"] = None if self.submit is None else self.submit.to_value()
        if not self.resume_after:
            del values["resume_after"]  # stored as before it existed, when it says nothing
        if self.scheduler is None:
            # A detached job's trigger is stored as it always was (an older triggerer can read it).
            del values["scheduler"], values["scheduler_options"]
        else:
            values["scheduler_options"] = dict(self.scheduler_options or {})
        return values


# --------------------------------------------------------------------------- the operator's job


@dataclass(frozen=True)
class JobSpec:
    """
    One task's remote job as the operator renders it: the command and where it runs, how it
    is watched and cleaned up, and the budgets of each step. Built by
    :meth:`~ssh_jobs_provider.operators.ssh_remote_job.SSHRemoteJobOperator.job_spec` once the
    templates are rendered; read by the durable logic and turned into the trigger's
    :class:`WatchSpec`.
    """

    ssh_conn_id: str
    command: str
    remote_host: str | None
    environment: Mapping[str, str]
    base_dir: str
    working_dir: str | None
    poll_interval: float
    log_chunk_size: int
    timeout: float | None
    cleanup: CleanupPolicy
    skip_on_exit_code: Container[int]
    conn_timeout: float | None
    banner_timeout: float
    conn_retry_attempts: int
    cleanup_retries: int
    command_timeout: float
    max_reconnect_attempts: int
    submit_from: SubmitFrom
    durable: bool
    #: The task's ``retries``: where a cycle of tries starts (see ``reattach.cycle_start``).
    retries: int
    #: ``"slurm"``: the job goes through Slurm (:attr:`slurm`); ``None``: a detached process.
    scheduler: str | None = None
    scheduler_options: Mapping[str, Any] | None = None
    #: The validated sbatch options (``None`` unless :attr:`scheduler` is ``"slurm"``).
    slurm: SlurmSpec | None = None
    #: How many of the job's last output lines the task returns (0: none).
    return_last_lines: int = 0

    @classmethod
    def render(
        cls,
        *,
        command: Any,
        environment: Any,
        remote_base_dir: str | None,
        remote_working_dir: str | None,
        scheduler: str | None = None,
        scheduler_options: Mapping[str, Any] | None = None,
        for_submit: bool = True,
        **settings: Any,
    ) -> JobSpec:
        """
        The spec of rendered operator arguments; ``ValueError`` naming the argument to fix.

        :param for_submit: check what the submit sends (the command, its environment and working
            dir); ``False`` for a worker that only completes, kills or cleans up a job submitted
            earlier: a template rendered differently since then must not keep it from that.
        """
        base_dir = validate_base_dir(DEFAULT_BASE_DIR if remote_base_dir is None else remote_base_dir)
        if not for_submit:
            # Whether it is a Slurm job matters here (it is killed with scancel); its sbatch options do not.
            queued = SlurmSpec({}, ()) if scheduler == "slurm" else None
            return cls(
                command=str(command or ""),
                environment={},
                base_dir=base_dir,
                working_dir=None,
                scheduler=scheduler,
                slurm=queued,
                **settings,
            )
        if not isinstance(command, str) or not command.strip():
            raise ValueError("SSHRemoteJobOperator: command is empty; give the shell text to run remotely.")
        return cls(
            scheduler=scheduler,
            scheduler_options=scheduler_options,
            # Rendered by now: bad sbatch options fail here, before anything reaches the host.
            slurm=slurm_spec(scheduler, scheduler_options),
            command=command,
            environment=normalise_environment(environment),
            base_dir=base_dir,
            working_dir=validate_working_dir(remote_working_dir) or None,
            **settings,
        )

    def outcome_of(self, exit_code: int) -> str:
        """``"success"``, ``"skipped"`` or ``"failed"``: what exit code ``exit_code`` makes of the task."""
        if exit_code == 0:
            return "success"
        return "skipped" if exit_code in self.skip_on_exit_code else "failed"

    def trigger_submit(self) -> TriggerSubmit:
        """The job as a trigger submits it (``submit_from="triggerer"``); too large: ``ValueError``."""
        return TriggerSubmit(self.command, dict(self.environment), self.working_dir)

    def watch_spec(
        self,
        paths: RemoteJobPaths,
        token: str,
        *,
        log_offset: int = 0,
        submit: TriggerSubmit | None = None,
        log_start: tuple[bool, int] = (False, 0),
    ) -> WatchSpec:
        """
        The arguments of the trigger that watches job ``paths`` (with ``submit``: submits it too);
        ``log_start``: its ``from_start`` and ``resume_after`` (see ``EarlierJob.log_start``).
        """
        from_start, resume_after = log_start
        return WatchSpec(
            ssh_conn_id=self.ssh_conn_id,
            remote_host=self.remote_host,
            job_id=paths.job_id,
            job_dir=paths.job_dir,
            log_file=paths.log_file,
            exit_code_file=paths.exit_code_file,
            poll_interval=self.poll_interval,
            log_chunk_size=self.log_chunk_size,
            log_offset=log_offset,
            command_timeout=self.command_timeout,
            max_reconnect_attempts=self.max_reconnect_attempts,
            cleanup_policy=self.cleanup,
            cleanup_retries=self.cleanup_retries,
            job_token=token,
            remote_base_dir=paths.base_dir,
            submit=submit,
            from_start=from_start,
            resume_after=resume_after,
            scheduler=self.scheduler,
            scheduler_options=self.scheduler_options,
            return_last_lines=self.return_last_lines,
        )
