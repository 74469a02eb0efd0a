"""The typed job spec: every argument checked once, the trigger's arguments round-trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.job_spec import (
    MAX_TRIGGER_SUBMIT_BYTES,
    CleanupPolicy,
    JobSpec,
    SubmitFrom,
    TriggerSubmit,
    WatchSpec,
)
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token

PATHS = RemoteJobPaths(job_id="job1", base_dir="/srv/jobs")


def settings(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ssh_conn_id": "ssh_default",
        "remote_host": None,
        "poll_interval": 5,
        "log_chunk_size": 65536,
        "timeout": None,
        "cleanup": CleanupPolicy.NEVER,
        "skip_on_exit_code": (99,),
        "conn_timeout": None,
        "banner_timeout": 30.0,
        "conn_retry_attempts": 5,
        "cleanup_retries": 3,
        "command_timeout": 30.0,
        "max_reconnect_attempts": 5,
        "submit_from": SubmitFrom.WORKER,
        "durable": True,
        "retries": 0,
    }
    return {**values, **changes}


def render(**changes: Any) -> JobSpec:
    arguments: dict[str, Any] = {
        "command": "echo hi",
        "environment": None,
        "remote_base_dir": None,
        "remote_working_dir": None,
        **settings(),
    }
    return JobSpec.render(**{**arguments, **changes})


@pytest.mark.parametrize(
    ("policy", "removed_after_success", "removed_after_failure"),
    [("never", False, False), ("on_success", True, False), ("always", True, True)],
)
def test_a_cleanup_policy_says_when_the_directory_goes(
    policy: str, removed_after_success: bool, removed_after_failure: bool
) -> None:
    parsed = CleanupPolicy.parse(policy)
    assert parsed == policy  # a str enum: stored and compared as its value
    assert parsed.removes(succeeded=True) is removed_after_success
    assert parsed.removes(succeeded=False) is removed_after_failure


def test_a_wrong_choice_is_named_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"cleanup must be one of \('never', 'on_success', 'always'\), got 'sometimes'"
    ):
        CleanupPolicy.parse("sometimes")
    with pytest.raises(ValueError, match="submit_from must be 'worker' or 'triggerer', got 'scheduler'"):
        SubmitFrom.parse("scheduler")


def test_render_defaults_the_base_dir_and_names_what_is_wrong() -> None:
    spec = render(environment={"A": "1"})
    assert spec.base_dir == "/tmp/airflow-ssh-jobs"
    assert dict(spec.environment) == {"A": "1"}
    with pytest.raises(ValueError, match="command is empty"):
        render(command="  ")
    with pytest.raises(ValueError, match="remote_base_dir"):
        render(remote_base_dir="relative/dir")


@pytest.mark.parametrize(("code", "outcome"), [(0, "success"), (99, "skipped"), (1, "failed")])
def test_an_exit_code_makes_the_outcome(code: int, outcome: str) -> None:
    assert render().outcome_of(code) == outcome


def test_the_trigger_arguments_round_trip_as_plain_json() -> None:
    token = new_job_token()
    spec = render(cleanup=CleanupPolicy.ON_SUCCESS, remote_host="h")
    watch = spec.watch_spec(PATHS, token, log_offset=7, submit=spec.trigger_submit(), log_start=(True, 0))
    stored = json.loads(json.dumps(watch.as_kwargs()))  # what the metadata database keeps
    assert stored["cleanup_policy"] == "on_success" and stored["submit"]["command"] == "echo hi"
    assert WatchSpec.from_kwargs(**stored) == watch


def test_a_trigger_only_touches_the_directory_named_after_its_job() -> None:
    with pytest.raises(ValueError, match="not named after job"):
        WatchSpec("c", None, "job2", PATHS.job_dir, PATHS.log_file, PATHS.exit_code_file)


def test_a_trigger_that_submits_needs_a_token() -> None:
    submit = TriggerSubmit("true")
    with pytest.raises(ValueError):
        WatchSpec("c", None, PATHS.job_id, PATHS.job_dir, PATHS.log_file, PATHS.exit_code_file, submit=submit)


@given(st.integers(min_value=0, max_value=2 * MAX_TRIGGER_SUBMIT_BYTES))
def test_a_triggerer_submit_is_refused_exactly_above_the_stored_size(size: int) -> None:
    command = "x" * size
    stored = len(json.dumps({"command": command, "environment": {}}).encode())
    if stored > MAX_TRIGGER_SUBMIT_BYTES:
        with pytest.raises(ValueError, match="submit_from='worker'"):
            TriggerSubmit(command)
    else:
        assert TriggerSubmit(command).to_value()["command"] == command


def test_the_trigger_takes_exactly_the_spec_fields_with_the_same_defaults() -> None:
    import dataclasses
    import inspect

    from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger

    parameters = dict(inspect.signature(SSHRemoteJobTrigger.__init__).parameters)
    parameters.pop("self")
    fields = {field.name: field for field in dataclasses.fields(WatchSpec)}
    assert list(parameters) == list(fields)
    for name, parameter in parameters.items():
        if fields[name].default is not dataclasses.MISSING:
            assert parameter.default == fields[name].default, name


def test_completing_a_job_does_not_check_what_only_the_submit_sends() -> None:
    # A template rendered differently since the submit (an empty command, a bad variable name)
    # must not keep the worker from killing or removing the job; the base dir is still checked.
    spec = render(command="", environment={"1BAD": "x"}, for_submit=False)
    assert spec.base_dir == "/tmp/airflow-ssh-jobs"
    with pytest.raises(ValueError, match="remote_base_dir"):
        render(command="", remote_base_dir="relative", for_submit=False)
