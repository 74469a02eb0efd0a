"""The production shape's services: PostgreSQL and Redis answer on loopback only, and leave nothing behind."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg2
import pytest
import redis

import demo
from harness.processes import is_same_live_process, process_id
from harness.production import _established_socket_inodes
from harness.services import DATABASE, DB_ROLE, PostgresServer, RedisServer
from harness.sshd import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2.0)
        return probe.connect_ex((LOOPBACK, port)) != 0


def test_postgres_and_redis_start_answer_and_stop_without_a_trace(tmp_path: Path) -> None:
    postgres, broker = PostgresServer(tmp_path / "pg"), RedisServer(tmp_path / "redis")
    with postgres, broker:
        assert postgres._proc is not None and broker._proc is not None
        pids = [process_id(postgres._proc.pid), process_id(broker._proc.pid)]
        data_root = postgres.data_root
        connection = psycopg2.connect(
            host=LOOPBACK, port=postgres.port, user=DB_ROLE, password=postgres.password, dbname=DATABASE
        )
        with connection, connection.cursor() as cursor:
            cursor.execute("SHOW listen_addresses")
            assert cursor.fetchone() == (LOOPBACK,)
        connection.close()
        # The password is required: the role cannot log in over TCP without it.
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(
                host=LOOPBACK, port=postgres.port, user=DB_ROLE, password="wrong", dbname=DATABASE
            )
        client = redis.Redis(host=LOOPBACK, port=broker.port, password=broker.password, socket_timeout=5)
        assert client.ping()
        assert client.config_get("bind")["bind"] == LOOPBACK
        assert client.config_get("save")["save"] == ""
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=LOOPBACK, port=broker.port, password="wrong", socket_timeout=5).ping()
        client.close()
        # Neither secret is on a command line other users can read.
        for pid in pids:
            assert pid is not None
            cmdline = Path(f"/proc/{pid[0]}/cmdline").read_bytes().decode(errors="replace")
            assert postgres.password not in cmdline and broker.password not in cmdline
    assert not any(is_same_live_process(*pid) for pid in pids if pid)
    assert refused(postgres.port) and refused(broker.port)
    assert data_root is not None and not data_root.exists()


def test_connections_are_counted_from_the_kernels_table() -> None:
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        port = server.getsockname()[1]
        assert not _established_socket_inodes(port)
        with socket.create_connection((LOOPBACK, port)), socket.create_connection((LOOPBACK, port)):
            assert len(_established_socket_inodes(port)) == 2
        # Closed by us: no longer established on our side, so no longer counted.
        assert not _established_socket_inodes(port)


def test_demo_lists_task_indexes_compactly() -> None:
    assert demo.index_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert demo.index_ranges([]) == ""
