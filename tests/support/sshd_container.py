"""The sshd test server inside a Docker container (``SSH_JOBS_TEST_SSHD=docker``).

Same interface as ``SSHServer``. The image is built locally by
``dev/sshd-image/build.sh`` (OpenSSH 10 from bookworm-backports; no registry
needed), so the suite can run against a second, newer OpenSSH than the
machine's own.

The container shares the host's network and PID namespace: the server listens
on the host's 127.0.0.1 (so the tests must run on the Docker host itself), and
the pids the remote jobs record are the host's, so tests that signal a job by
its pid and ``stop()``'s process walk work as with the local server. The temp
dir is mounted at the same path inside, so the generated config, keys and log
work unchanged.

The container lives from the first ``start()`` to ``close()``. ``stop()`` and
``start()`` stop and start only sshd inside it, like an sshd restart on a real
host: detached jobs keep running. ``close()`` removes the container and with it
everything still running inside.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

# Ryuk (testcontainers' reaper) needs its own image and the Docker socket mounted;
# close() removes our containers itself. Must be set before testcontainers is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

from harness.processes import ProcessId, descendants, is_same_live_process, process_id, signal_processes
from harness.processes import wait_processes_gone as _wait_gone

from .sshd import POLL_INTERVAL, START_TIMEOUT, STOP_TIMEOUT, BaseSSHServer, SSHServerError

IMAGE_ENV = "SSH_JOBS_TEST_IMAGE"
DEFAULT_IMAGE = "local/sshd:openssh10"
#: Set by dev/docker-env.sh when Docker cannot run on this machine: the reason to skip.
UNAVAILABLE_ENV = "SSH_JOBS_DOCKER_UNAVAILABLE"
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")
BUILD_HINT = f"Build it with `bash dev/sshd-image/build.sh` (as root), or set {IMAGE_ENV}."


def docker_engine_reachable(timeout: float = 2.0) -> bool:
    import docker

    # docker-py leaks a socket when it fails to reach the engine, so rule out the
    # common "no engine at all" case first, looking where docker.from_env() would.
    if "DOCKER_HOST" not in os.environ and not DEFAULT_DOCKER_SOCKET.exists():
        return False
    # Any failure (permission denied, daemon down, bad DOCKER_HOST) means "not reachable".
    try:
        client = docker.from_env(timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def require_docker_engine() -> None:
    """Skip the calling test when no engine is reachable; fail instead under ``CI=true``.

    CI must run the container tests: there a skip would hide a missing part of the suite.
    """
    reason = os.environ.get(UNAVAILABLE_ENV)
    if reason is None:
        if docker_engine_reachable():
            return
        reason = "no Docker engine reachable"
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run ({reason}), and CI=true requires them", pytrace=False)
    pytest.skip(f"container tests skipped: {reason}")


class ContainerSSHServer(BaseSSHServer):
    """One sshd in a container on 127.0.0.1:<port>; ``user`` is the container's root."""

    def __init__(self, base_dir: Path, *, extra_mounts: Sequence[Path] = (), **options: Any) -> None:
        """``extra_mounts``: host dirs the remote side must also see (e.g. remote job dirs)."""
        super().__init__(base_dir, **options)
        self.user = "root"
        self.image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
        self.extra_mounts = [Path(path).resolve() for path in extra_mounts]
        self._container: DockerContainer | None = None
        self._listener: ProcessId | None = None

    @property
    def pid(self) -> int | None:
        """The listener's pid (the host's: the container shares its PID namespace)."""
        return self._listener[0] if self.running and self._listener else None

    @property
    def running(self) -> bool:
        return self._listener is not None and is_same_live_process(*self._listener)

    def start(self) -> None:
        if self.running:
            return
        try:
            if self._container is None:
                self._container = self._start_container()
            self._start_with_port_retries(self._spawn_sshd, self._forget_listener, f" in {self.image}")
        except BaseException:
            # Never started: nothing can use the container, so do not leave it behind.
            if self._has_started:
                self.stop()
            else:
                self.close()
            raise

    def _start_container(self) -> DockerContainer:
        # An idle main process keeps the container up while sshd is stopped and started in it.
        container = DockerContainer(self.image, network_mode="host", pid_mode="host")
        container.with_command(["sleep", "infinity"])
        for path in {self.base_dir, *self.extra_mounts}:
            container.with_volume_mapping(str(path), str(path), "rw")
        try:
            return container.start()
        except Exception as error:
            container.stop()
            message = f"could not start a container from {self.image}: {error}\n{BUILD_HINT}"
            raise SSHServerError(message) from error

    def _forget_listener(self) -> None:
        self._listener = None

    def _spawn_sshd(self) -> None:
        """Run ``sshd -D`` in the container; ``_listener`` is then the listener as seen from the host."""
        self._listener = self._exec_sshd()

    def _exec_sshd(self) -> ProcessId | None:
        assert self._container is not None
        sshd = f"/usr/sbin/sshd -D -f {self.config_path} -E {self.log_path}"
        # Errors before sshd opens its -E log (e.g. bad config) go to the stdio file.
        command = f"mkdir -p /run/sshd && exec {sshd} </dev/null >>{self.stdio_path} 2>&1"
        container = self._container.get_wrapped_container()
        api = container.client.api
        exec_id = api.exec_create(container.id, ["/bin/sh", "-c", command])["Id"]
        api.exec_start(exec_id, detach=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            state = api.exec_inspect(exec_id)
            if state.get("Pid"):
                # `exec` keeps the shell's pid for sshd; None if it already exited.
                return process_id(int(state["Pid"]))
            if not state.get("Running") and state.get("ExitCode") is not None:
                return None
            if time.monotonic() >= deadline:
                raise SSHServerError(f"docker exec of sshd did not start within {START_TIMEOUT}s")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """Stop sshd and every per-connection process it forked; the container stays. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is None or not is_same_live_process(*listener):
            return
        pid = listener[0]
        # Frozen, the listener cannot fork a child we would miss in the snapshot.
        os.kill(pid, signal.SIGSTOP)
        session_processes = descendants(pid)
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
        signal_processes(session_processes, signal.SIGTERM)
        everything = [listener, *session_processes]
        survivors = _wait_gone(everything, STOP_TIMEOUT)
        signal_processes(survivors, signal.SIGKILL)
        _wait_gone(survivors, STOP_TIMEOUT)

    def close(self) -> None:
        """Stop sshd, then remove the container with whatever still runs in it. Idempotent."""
        try:
            self.stop()
        finally:
            container, self._container = self._container, None
            if container is not None:
                container.stop()
