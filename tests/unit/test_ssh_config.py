"""SSH config files resolved once into SSHConnectionSettings, for both hooks alike."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ssh_jobs_provider.hooks import _asyncssh, ssh_config
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.proxy import parse_proxy_jump, proxy_command_line


def conn(conn_id: str = "c", host: str = "gpu", extra: dict[str, Any] | None = None, **fields: Any) -> Any:
    return SimpleNamespace(
        conn_id=conn_id,
        host=host,
        port=fields.get("port"),
        login=fields.get("login"),
        password=fields.get("password"),
        extra_dejson=extra or {},
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    key = tmp_path / "id_gpu"
    key.write_text("not read here")
    path = tmp_path / "config"
    path.write_text(
        f"""
# comment
Host gpu gpu-*
    HostName %h.cluster.example
    User alice
    Port=2222
    IdentityFile {tmp_path}/missing_key
    IdentityFile {key}
    ServerAliveInterval 15
    ServerAliveCountMax 4
    ConnectTimeout 7
    ProxyJump bob@bastion.example:2200
    StrictHostKeyChecking no
Host bastion.example
    User bob-from-file
    IdentityFile {key}
Host *
    User nobody
    ProxyCommand nc %h %p
"""
    )
    return path


def resolve(config: Path, **kwargs: Any) -> SSHConnectionSettings:
    extra = {"ssh_config_file": str(config), **kwargs.pop("extra", {})}
    return SSHConnectionSettings.from_connection(conn(extra=extra, **kwargs))


def test_an_alias_resolves_every_supported_option(config: Path, caplog) -> None:
    ssh_config._lookup.cache_clear()
    with caplog.at_level(logging.WARNING):
        s = resolve(config)
    assert (s.host, s.alias, s.username, s.port) == ("gpu.cluster.example", "gpu", "alice", 2222)
    assert s.key_file == str(config.parent / "id_gpu")  # the first identity file that exists
    assert (s.keepalive_interval, s.keepalive_count_max, s.conn_timeout) == (15, 4, 7)
    # ProxyJump came first, so the later ProxyCommand of "Host *" is not used.
    assert s.proxy_command is None and s.proxy_jump is not None
    jump = s.proxy_jump
    assert (jump.host, jump.username, jump.port, jump.key_file) == (
        "bastion.example",
        "bob",
        2200,
        s.key_file,
    )
    assert "StrictHostKeyChecking".lower() in caplog.text and "host_key_policy" in caplog.text


def test_connection_fields_and_extras_win_over_the_file(config: Path) -> None:
    s = resolve(config, login="carol", port=22, extra={"keepalive_interval": 5, "conn_timeout": 3})
    assert (s.username, s.port, s.keepalive_interval, s.conn_timeout) == ("carol", 22, 5, 3)
    assert s.host == "gpu.cluster.example"  # the host field IS the alias


def test_proxy_command_tokens_and_the_shell(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("Host box\n  HostName 10.0.0.5\n  ProxyCommand ssh -W %h:%p jump # %%\n")
    s = SSHConnectionSettings.from_connection(
        conn(host="box", login="u", extra={"ssh_config_file": str(path)})
    )
    assert s.proxy_command == "ssh -W 10.0.0.5:22 jump # %"
    assert proxy_command_line(s.proxy_command) == "/bin/sh -c 'exec ssh -W 10.0.0.5:22 jump # %'"


def test_match_exec_is_never_run_and_warns(tmp_path: Path, caplog) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "config"
    path.write_text(f'Match exec "touch {marker}"\n  User wrong\nHost *\n  User right\n')
    with caplog.at_level(logging.WARNING):
        s = SSHConnectionSettings.from_connection(conn(extra={"ssh_config_file": str(path)}))
    assert s.username == "right"
    assert not marker.exists()
    assert "Match exec" in caplog.text and "not evaluated" in caplog.text


def test_include_match_host_and_negation(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("Host *.lab !secret.lab\n  Port 2201\n")
    path = tmp_path / "config"
    path.write_text(f"Include {tmp_path}/conf.d/*.conf\nMatch host *.lab user admin\n  Port 2299\n")
    lab = SSHConnectionSettings.from_connection(conn(host="n1.lab", extra={"ssh_config_file": str(path)}))
    secret = SSHConnectionSettings.from_connection(
        conn(host="secret.lab", login="admin", extra={"ssh_config_file": str(path)})
    )
    assert (lab.port, secret.port) == (2201, 2299)


def test_none_reads_no_file_and_a_missing_file_names_the_extra(tmp_path: Path) -> None:
    assert SSHConnectionSettings.from_connection(conn(extra={"ssh_config_file": "none"})).host == "gpu"
    with pytest.raises(ValueError, match="ssh_config_file"):
        SSHConnectionSettings.from_connection(conn(extra={"ssh_config_file": str(tmp_path / "nope")}))


def test_asyncssh_never_reads_a_config_file_itself(config: Path) -> None:
    options = _asyncssh.connect_options(resolve(config), logging.getLogger("test"))
    assert options["config"] is None  # () would make asyncssh read ~/.ssh/config on its own
    assert options["host"] == "gpu.cluster.example" and options["port"] == 2222


def test_proxy_jump_spellings() -> None:
    hops = parse_proxy_jump("a@b:1,ssh://c,[::1]:22", "test")
    assert [(h.user, h.host, h.port) for h in hops] == [("a", "b", 1), (None, "c", None), (None, "::1", 22)]
    with pytest.raises(ValueError, match="ProxyJump hop"):
        parse_proxy_jump("a@@b:x", "test")


def test_proxy_jump_conn_id_chains_and_loops() -> None:
    conns = {
        "j1": conn("j1", host="j1.example", extra={"proxy_jump_conn_id": "j2", "ssh_config_file": "none"}),
        "j2": conn("j2", host="j2.example", extra={"ssh_config_file": "none"}),
    }
    target = conn("t", host="t.example", extra={"proxy_jump_conn_id": "j1", "ssh_config_file": "none"})
    s = SSHConnectionSettings.from_connection(target, conns)
    assert s.proxy_jump and s.proxy_jump.host == "j1.example"
    assert s.proxy_jump.proxy_jump and s.proxy_jump.proxy_jump.host == "j2.example"
    conns["j2"].extra_dejson["proxy_jump_conn_id"] = "j1"
    with pytest.raises(ValueError, match="loops: t -> j1 -> j2 -> j1"):
        SSHConnectionSettings.from_connection(target, conns)
    with pytest.raises(ValueError, match="'missing' named by 'proxy_jump_conn_id' was not found"):
        SSHConnectionSettings.from_connection(conn(extra={"proxy_jump_conn_id": "missing"}), {})


def test_the_jump_host_is_part_of_the_shared_connection_identity() -> None:
    a = SSHConnectionSettings(
        conn_id=None, host="t", proxy_jump=SSHConnectionSettings(conn_id=None, host="j1")
    )
    b = SSHConnectionSettings(
        conn_id=None, host="t", proxy_jump=SSHConnectionSettings(conn_id=None, host="j2")
    )
    assert a.identity() != b.identity()
    assert hash(a.identity())  # usable as a registry key


def test_secrets_of_a_jump_host_stay_out_of_repr() -> None:
    jump = SSHConnectionSettings(conn_id=None, host="j", password="bastion-secret")
    s = SSHConnectionSettings(conn_id=None, host="t", password="target-secret", proxy_jump=jump)
    assert "secret" not in repr(s)
