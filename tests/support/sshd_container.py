"""The sshd test server inside a Docker container (``SSH_JOBS_TEST_SSHD=docker``).

Same interface as ``SSHServer``. Host networking keeps the server on the
host's 127.0.0.1, so the tests must run on the Docker host itself, not in a
sibling container. The temp dir is mounted at the same path inside, so the
generated config, keys and log work unchanged. The image needs bash and
/usr/sbin/sshd, for example::

    FROM debian:bookworm-slim
    RUN apt-get update && apt-get install -y --no-install-recommends openssh-server \\
        && rm -rf /var/lib/apt/lists/*
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Ryuk (testcontainers' reaper) needs its own image and the Docker socket mounted;
# stop() removes our containers itself. Must be set before testcontainers is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

from .sshd import BaseSSHServer, SSHServerError

IMAGE_ENV = "SSH_JOBS_TEST_IMAGE"
DEFAULT_IMAGE = "local/sshd:bookworm"
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")
BUILD_HINT = (
    f"Build it (or set {IMAGE_ENV}) from a Dockerfile such as: FROM debian:bookworm-slim / "
    "RUN apt-get update && apt-get install -y --no-install-recommends openssh-server"
)


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


class ContainerSSHServer(BaseSSHServer):
    """One sshd in a container on 127.0.0.1:<port>; ``user`` is the container's root."""

    def __init__(self, base_dir: Path, *, extra_mounts: Sequence[Path] = (), **options: Any) -> None:
        """``extra_mounts``: host dirs the remote side must also see (e.g. remote job dirs)."""
        super().__init__(base_dir, **options)
        self.user = "root"
        self.image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
        self.extra_mounts = [Path(path).resolve() for path in extra_mounts]
        self._container: DockerContainer | None = None

    @property
    def running(self) -> bool:
        if self._container is None:
            return False
        self._container.reload()
        return self._container.status == "running"

    def start(self) -> None:
        if self.running:
            return
        offset = self._log_size()
        try:
            self._container = self._build_container().start()
        except Exception as error:
            self.stop()
            raise SSHServerError(
                f"could not start container from {self.image}: {error}\n{BUILD_HINT}"
            ) from error
        if not self._wait_until_listening(offset, lambda: self.running):
            output = self._log_since(offset)
            self.stop()
            raise SSHServerError(f"sshd exited during start-up in {self.image}; log:\n{output}")

    def _build_container(self) -> DockerContainer:
        sshd = f"/usr/sbin/sshd -D -f {self.config_path} -E {self.log_path}"
        container = DockerContainer(self.image, network_mode="host")
        container.with_command(["/bin/sh", "-c", f"mkdir -p /run/sshd && exec {sshd}"])
        for path in {self.base_dir, *self.extra_mounts}:
            container.with_volume_mapping(str(path), str(path), "rw")
        return container

    def stop(self) -> None:
        """Remove the container, which ends every session with it. Idempotent."""
        container, self._container = self._container, None
        if container is not None:
            container.stop()
