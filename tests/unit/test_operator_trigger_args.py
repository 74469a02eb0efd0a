"""Operator argument validation and defaults; trigger serialization round-trip."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import make_operator

# --------------------------------------------------------------------------- operator


def test_template_fields_and_extensions() -> None:
    assert tuple(SSHRemoteJobOperator.template_fields) == (
        "command",
        "environment",
        "remote_host",
        "remote_base_dir",
        "remote_working_dir",
        "ssh_conn_id",
        "scheduler_options",
    )
    assert tuple(SSHRemoteJobOperator.template_ext) == (".sh", ".bash")


DOCUMENTED_DEFAULTS = {
    "remote_host": None,
    "environment": None,
    "remote_base_dir": None,
    "poll_interval": 5,
    "log_chunk_size": 65536,
    "timeout": None,
    "cleanup": "never",
    "remote_os": "auto",
    "skip_on_exit_code": None,
    "conn_timeout": None,
    "banner_timeout": 30.0,
    "conn_retry_attempts": 5,
    "cleanup_retries": 3,
    "command_timeout": 30.0,
    "max_reconnect_attempts": 5,
    "remote_working_dir": None,
}


def test_signature_defaults_match_the_documented_ones() -> None:
    params = inspect.signature(SSHRemoteJobOperator.__init__).parameters
    assert {name: params[name].default for name in DOCUMENTED_DEFAULTS} == DOCUMENTED_DEFAULTS
    assert params["ssh_conn_id"].default is inspect.Parameter.empty
    assert params["command"].default is inspect.Parameter.empty


def test_constructed_operator_holds_the_documented_defaults() -> None:
    op = SSHRemoteJobOperator(task_id="job", ssh_conn_id="ssh_default", command="echo hi")
    expected = {**DOCUMENTED_DEFAULTS, "skip_on_exit_code": ()}
    assert {name: getattr(op, name) for name in expected} == expected
    assert (op.ssh_conn_id, op.command) == ("ssh_default", "echo hi")


def test_explicit_arguments_are_kept() -> None:
    op = make_operator(
        remote_host="h",
        environment={"A": "1"},
        base_dir="/srv/jobs",
        poll_interval=0.5,
        log_chunk_size=1024,
        timeout=60,
        cleanup="always",
        remote_os="posix",
        skip_on_exit_code=[99, 100],
        conn_timeout=3,
        banner_timeout=4.5,
        conn_retry_attempts=1,
        cleanup_retries=1,
        command_timeout=7,
        max_reconnect_attempts=0,
    )
    assert op.remote_host == "h"
    assert op.environment == {"A": "1"}
    assert op.poll_interval == 0.5
    assert op.log_chunk_size == 1024
    assert op.cleanup == "always"
    assert op.skip_on_exit_code == [99, 100]
    assert op.max_reconnect_attempts == 0
    assert op.command_timeout == 7.0


def test_single_skip_exit_code_becomes_a_collection() -> None:
    assert make_operator(skip_on_exit_code=99).skip_on_exit_code == (99,)


def test_windows_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="remote_os='windows' is not supported"):
        make_operator(remote_os="windows")
    with pytest.raises(ValueError, match=r"windows.*not supported"):
        make_operator("x", command="dir", remote_os="windows")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"remote_os": "linux"}, "remote_os must be 'auto' or 'posix'"),
        ({"cleanup": "sometimes"}, "cleanup must be one of"),
        ({"cleanup": "Always"}, "cleanup must be one of"),
        ({"poll_interval": 0}, "poll_interval must be > 0"),
        ({"poll_interval": -1}, "poll_interval must be > 0"),
        ({"poll_interval": "5"}, "poll_interval must be a number"),
        ({"poll_interval": True}, "poll_interval must be a number"),
        ({"command_timeout": 0}, "command_timeout must be > 0"),
        ({"banner_timeout": -0.1}, "banner_timeout must be > 0"),
        ({"log_chunk_size": 1023}, "log_chunk_size must be >= 1024"),
        ({"conn_retry_attempts": 0}, "conn_retry_attempts must be >= 1"),
        ({"cleanup_retries": 0}, "cleanup_retries must be >= 1"),
        ({"max_reconnect_attempts": -1}, "max_reconnect_attempts must be >= 0"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"conn_timeout": -5}, "conn_timeout must be > 0"),
        ({"skip_on_exit_code": True}, "skip_on_exit_code"),
        ({"skip_on_exit_code": 1.5}, "skip_on_exit_code"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_operator(**kwargs)


def test_string_skip_exit_code_is_rejected() -> None:
    with pytest.raises(ValueError, match="skip_on_exit_code"):
        make_operator(skip_on_exit_code="1")


def test_operator_builds_the_trigger_from_the_job_paths() -> None:
    op = make_operator(
        remote_host="h",
        poll_interval=2,
        log_chunk_size=4096,
        command_timeout=9,
        max_reconnect_attempts=2,
        cleanup="on_success",
        cleanup_retries=4,
    )
    paths = RemoteJobPaths(job_id="job1", base_dir="/srv/jobs")

    trigger = SSHRemoteJobTrigger.from_spec(op.job_spec().watch_spec(paths, "", log_offset=17))

    _, kwargs = trigger.serialize()
    assert kwargs == {
        "ssh_conn_id": "ssh_default",
        "remote_host": "h",
        "job_id": "job1",
        "job_dir": "/srv/jobs/job1",
        "log_file": "/srv/jobs/job1/stdout.log",
        "exit_code_file": "/srv/jobs/job1/exit_code",
        "remote_os": "posix",
        "poll_interval": 2,
        "log_chunk_size": 4096,
        "log_offset": 17,
        "command_timeout": 9.0,
        "max_reconnect_attempts": 2,
        "cleanup_policy": "on_success",
        "cleanup_retries": 4,
        "job_token": "",
        "remote_base_dir": "/srv/jobs",
        "submit": None,
        "from_start": False,
        "return_last_lines": 0,
    }
    assert trigger.paths == paths


# --------------------------------------------------------------------------- trigger


def _import(classpath: str) -> type:
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_trigger_classpath_is_importable() -> None:
    trigger = SSHRemoteJobTrigger("c", None, "j", "/b/j", "/b/j/stdout.log", "/b/j/exit_code")
    classpath, _ = trigger.serialize()
    assert _import(classpath) is SSHRemoteJobTrigger


names = st.text(max_size=30)
job_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", fullmatch=True)
base_dirs = st.sampled_from(["/tmp/airflow-ssh-jobs", "/srv/jobs", "/home/u/a b/jobs"])


@st.composite
def trigger_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    job_id, base_dir = draw(job_ids), draw(base_dirs)
    kwargs = draw(trigger_other_kwargs)
    token = draw(st.just("") | st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
    return {
        **kwargs,
        "job_id": job_id,
        "job_dir": f"{base_dir}/{job_id}",
        "job_token": token,
        "remote_base_dir": draw(st.none() | st.just(base_dir)),
        # A trigger that submits needs the submit's token.
        "submit": draw(st.none() | submits) if token else None,
        "from_start": draw(st.booleans()),
        # Serialized only when it says something (a take-over's): as before it existed otherwise.
        **draw(st.just({}) | st.fixed_dictionaries({"resume_after": st.integers(1, 2**50)})),
        "return_last_lines": draw(st.integers(0, 1000)),
        # Serialized only for a Slurm job: a detached job's trigger row is as it always was.
        **draw(st.just({}) | slurm_kwargs),
    }


slurm_kwargs = st.fixed_dictionaries(
    {
        "scheduler": st.just("slurm"),
        "scheduler_options": st.dictionaries(
            st.sampled_from(["partition", "account", "qos", "comment"]),
            st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True),
        ),
    }
)


#: Text a command or an environment value may hold (UTF-8, no NUL).
shell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
submits = st.fixed_dictionaries(
    {
        "command": shell_text.filter(str.strip),
        "environment": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), shell_text),
        "working_dir": st.none() | st.just("/srv/work"),
    }
)


trigger_other_kwargs = st.fixed_dictionaries(
    {
        "ssh_conn_id": names,
        "remote_host": st.none() | names,
        "log_file": names,
        "exit_code_file": names,
        "remote_os": st.just("posix"),
        "poll_interval": st.integers(1, 3600) | st.floats(0.01, 3600),
        "log_chunk_size": st.integers(1024, 1 << 24),
        "log_offset": st.integers(0, 1 << 50),
        "command_timeout": st.floats(0.1, 3600),
        "max_reconnect_attempts": st.integers(0, 100),
        "cleanup_policy": st.sampled_from(["never", "on_success", "always"]),
        "cleanup_retries": st.integers(1, 10),
    }
)


@settings(max_examples=100)
@given(kwargs=trigger_kwargs())
def test_trigger_serialize_round_trips(kwargs: dict[str, Any]) -> None:
    classpath, serialized = SSHRemoteJobTrigger(**kwargs).serialize()

    assert serialized == kwargs
    rebuilt = _import(classpath)(**serialized)
    assert rebuilt.serialize() == (classpath, serialized)


def test_trigger_serialize_covers_every_init_argument() -> None:
    params = [p for p in inspect.signature(SSHRemoteJobTrigger.__init__).parameters if p != "self"]
    where = ("c", "h", "j", "/b/j", "/b/j/stdout.log", "/b/j/exit_code")
    slurm = {"scheduler": "slurm", "scheduler_options": {}}
    _, serialized = SSHRemoteJobTrigger(*where, resume_after=5, **slurm).serialize()  # type: ignore[arg-type]
    assert list(serialized) == params
    # What a trigger of an older release never said is left out when it says nothing (an older
    # triggerer can still read it): the scheduler of a detached job, a resume_after of 0.
    _, detached = SSHRemoteJobTrigger(*where).serialize()
    assert list(detached) == [p for p in params if not p.startswith("scheduler") and p != "resume_after"]


def test_trigger_paths_are_rebuilt_from_job_dir() -> None:
    trigger = SSHRemoteJobTrigger("c", None, "j1", "/srv/jobs/j1/", "/srv/jobs/j1/stdout.log", "x")
    assert trigger.paths == RemoteJobPaths(job_id="j1", base_dir="/srv/jobs")


def test_trigger_refuses_directories_outside_its_base_dir_or_not_its_job(remote_base_dir: str) -> None:
    base = remote_base_dir
    with pytest.raises(ValueError, match="not directly under"):
        SSHRemoteJobTrigger("c", None, "j1", "/etc/j1", "x", "x", remote_base_dir=base)
    with pytest.raises(ValueError, match="not named after job"):
        SSHRemoteJobTrigger("c", None, "j1", f"{base}/other", "x", "x", remote_base_dir=base)


# --------------------------------------------------------------------------- which try is deferred


class _Comms:
    """Airflow's supervisor channel, answering a GetXCom as the API server would."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.sent: list[Any] = []

    def send(self, msg: Any) -> Any:
        from airflow.sdk.execution_time.comms import XComResult

        self.sent.append(msg)
        return XComResult(key=msg.key, value=self.value)


@pytest.mark.parametrize(("value", "answer"), [(2, 2), (None, None), ("2", None), (True, None)])
def test_the_deferred_try_is_the_one_its_xcom_names(
    monkeypatch: pytest.MonkeyPatch, value: Any, answer: int | None
) -> None:
    from types import SimpleNamespace

    # Airflow 2.11 has no supervisor to ask (nor a trigger on_kill that would ask it).
    task_runner = pytest.importorskip("airflow.sdk.execution_time.task_runner")

    from ssh_jobs_provider.triggers.task_state import TRY_XCOM_KEY, deferred_try

    comms = _Comms(value)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r1", map_index=3, try_number=1)
    assert deferred_try(ti) == answer
    (msg,) = comms.sent
    assert (msg.key, msg.dag_id, msg.task_id, msg.run_id, msg.map_index) == (TRY_XCOM_KEY, "d", "t", "r1", 3)


def test_every_deferral_records_its_try_for_an_earlier_try_s_trigger() -> None:
    from ssh_jobs_provider._compat import TaskDeferred
    from ssh_jobs_provider.triggers.task_state import TRY_XCOM_KEY
    from support.runner import StandInTaskInstance, context_for

    ti = StandInTaskInstance(try_number=3)
    with pytest.raises(TaskDeferred) as deferred:
        make_operator(submit_from="triggerer").execute(context_for(ti))  # type: ignore[arg-type]
    assert ti.xcom[TRY_XCOM_KEY] == 3
    # The token (and the pid, once known) travel back to execute_complete.
    assert set(deferred.value.kwargs or {}) == {"job_token", "job_pid"}


class _KnownTaskTrigger(SSHRemoteJobTrigger):
    """A trigger of try 1 whose task Airflow reports as ``now``; records whether it connects to kill."""

    now: tuple[str | None, int | None] = (None, None)
    connected = False

    async def _task_now(self) -> tuple[str | None, int | None]:
        return self.now

    def _make_hook(self, attempts: int = 1) -> Any:
        self.connected = True
        raise RuntimeError("the kill connects here")


@pytest.mark.parametrize(
    ("now", "spared"),
    [
        (("deferred", 1), True),  # the same try, watched by another triggerer
        (("deferred", None), True),  # Airflow did not say which try: as before, and the log says so
        (("deferred", 2), False),  # a later try is deferred: this try was stopped
        (("failed", None), False),
        ((None, None), False),
    ],
)
def test_trigger_on_kill_spares_the_job_only_for_the_same_try(
    now: tuple[str | None, int | None], spared: bool
) -> None:
    import asyncio
    from types import SimpleNamespace

    paths = RemoteJobPaths(job_id="af_d_t_t1_0123456789abcdef", base_dir="/srv/jobs")
    trigger = _KnownTaskTrigger(
        ssh_conn_id="c",
        remote_host=None,
        job_id=paths.job_id,
        job_dir=paths.job_dir,
        log_file=paths.log_file,
        exit_code_file=paths.exit_code_file,
    )
    trigger.task_instance = SimpleNamespace(task_id="t", try_number=1)  # type: ignore[assignment]
    trigger.now = now
    if spared:
        asyncio.run(trigger.on_kill())
    else:
        with pytest.raises(RuntimeError, match="the kill connects here"):
            asyncio.run(trigger.on_kill())
    assert trigger.connected is not spared
