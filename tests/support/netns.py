"""
A bastion topology the client cannot bypass, made of network namespaces (Linux, root).

::

    test process (root namespace) --veth-- bastion namespace --veth-- target namespace
        10.213.N.1/30                 10.213.N.2/30 | 10.214.N.1/29     10.214.N.2, .3 /29

The root namespace has no route to the target's network, and the bastion namespace does not
forward packets: the target's sshd can only be reached by a process running in the bastion
namespace, i.e. by the bastion sshd forwarding a connection. Every address lives on links the
test created; nothing leaves the machine. :func:`record_connects` shows which addresses the
test process itself connected to.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class BastionTopology:
    """Two namespaces and two veth pairs; :meth:`create` and :meth:`destroy` (idempotent)."""

    tag: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = int(self.tag, 16) % 250 + 1
        self.bastion_ns = f"sshj-b-{self.tag}"
        self.target_ns = f"sshj-t-{self.tag}"
        self.client_side = f"10.213.{n}.1"
        #: Where the client reaches the bastion.
        self.bastion_outer = f"10.213.{n}.2"
        #: The bastion's address on the target's network (the target sees connections from it).
        self.bastion_inner = f"10.214.{n}.1"
        #: Two addresses of the target namespace: two "hosts" behind one bastion.
        self.targets = [f"10.214.{n}.2", f"10.214.{n}.3"]

    def create(self) -> BastionTopology:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self) -> None:
        b, t = self.bastion_ns, self.target_ns
        root_end, bastion_end = f"sjr{self.tag}", f"sjb{self.tag}"
        inner_b, inner_t = f"sji{self.tag}", f"sjt{self.tag}"
        for ns in (b, t):
            _ip("netns", "add", ns)
            self.created.append(f"netns:{ns}")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", root_end, "type", "veth", "peer", "name", bastion_end, "netns", b)
        self.created.append(f"link:{root_end}")
        _ip("addr", "add", f"{self.client_side}/30", "dev", root_end)
        _ip("link", "set", root_end, "up")
        _ip("-n", b, "addr", "add", f"{self.bastion_outer}/30", "dev", bastion_end)
        _ip("-n", b, "link", "set", bastion_end, "up")
        _ip("-n", b, "link", "add", inner_b, "type", "veth", "peer", "name", inner_t, "netns", t)
        _ip("-n", b, "addr", "add", f"{self.bastion_inner}/29", "dev", inner_b)
        _ip("-n", b, "link", "set", inner_b, "up")
        for address in self.targets:
            _ip("-n", t, "addr", "add", f"{address}/29", "dev", inner_t)
        _ip("-n", t, "link", "set", inner_t, "up")
        # No forwarding in the bastion namespace: the target is reachable only via its sshd.
        subprocess.run(
            ["ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def destroy(self) -> None:
        """Delete what :meth:`create` made (deleting a namespace deletes its veth ends)."""
        for item in reversed(self.created):
            kind, name = item.split(":", 1)
            args = ["netns", "delete", name] if kind == "netns" else ["link", "delete", name]
            subprocess.run(["ip", *args], capture_output=True, timeout=30)
        self.created.clear()


_recording: list[list[Any]] = []
_lock = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _recording:
        with _lock:
            for record in _recording:
                record.append(args[1])


@contextmanager
def record_connects() -> Iterator[list[Any]]:
    """Every address this process (any thread) passes to ``socket.connect`` meanwhile."""
    global _hook_installed
    if not _hook_installed:
        # Audit hooks cannot be removed; this one does nothing unless a recording runs.
        sys.addaudithook(_audit)
        _hook_installed = True
    record: list[Any] = []
    _recording.append(record)
    try:
        yield record
    finally:
        _recording.remove(record)
