"""
Build-time helpers for this documentation: numbers computed from the code, never typed in.

- ``.. maxstartups-table::`` tabulates sshd's ``MaxStartups start:rate:full`` drop probability.
- ``.. backoff-table::`` tabulates the waits of the provider's retry policy (``DEFAULT_BACKOFF``).
- ``.. remote-layout::`` shows the job directory listing documented in ``protocol.scripts``.
- ``.. sharing-key::`` lists the connection settings that decide whether two triggers share
  one connection, found by trying ``SSHConnectionSettings.identity()`` field by field.
- ``:default:`Class.param``` renders a parameter's default from the class signature,
  ``:value:`module.CONSTANT``` a module constant or class attribute (sequences as a list),
  ``:bytes:`module.CONSTANT``` a byte count in KiB/MiB and ``:backoff-total:`n``` the total
  wait after *n* failures, so the prose follows the code.
- Every documented class is checked: each constructor parameter must have a ``:param:`` entry
  in the class docstring (and no stale ones), and each templated field must say "templated".
  A mismatch is a warning, which fails the warnings-as-errors build.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import re
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: Short class names the ``:default:`` role accepts, and where they live.
CLASSES = {
    "SSHRemoteJobOperator": "ssh_jobs_provider.operators.ssh_remote_job",
    "SSHRemoteJobTrigger": "ssh_jobs_provider.triggers.ssh_remote_job",
    "SSHHook": "ssh_jobs_provider.hooks.ssh",
    "SSHHookAsync": "ssh_jobs_provider.hooks.ssh",
    "SSHConnectionSettings": "ssh_jobs_provider.hooks.connection_settings",
    "BackoffPolicy": "ssh_jobs_provider.retry",
}

_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:")


# ----------------------------------------------------------------------------- MaxStartups


def drop_probability(unauthenticated: int, start: int, rate: int, full: int) -> float:
    """
    Percent chance that sshd drops a new connection, as ``sshd_config(5)`` documents it.

    Below ``start`` unauthenticated connections nothing is dropped; at ``start`` the chance
    is ``rate`` percent, rising linearly to 100 percent at ``full``.
    """
    if unauthenticated < start:
        return 0.0
    if unauthenticated >= full:
        return 100.0
    return rate + (100 - rate) * (unauthenticated - start) / (full - start)


def drop_percent_as_sshd(unauthenticated: int, start: int, rate: int, full: int) -> int:
    """The same in whole percent, as sshd computes it (integer arithmetic, rounded down)."""
    if unauthenticated < start:
        return 0
    if unauthenticated >= full or rate == 100:
        return 100
    return rate + (100 - rate) * (unauthenticated - start) // (full - start)


def _check_drop_formula(start: int, rate: int, full: int) -> None:
    """Refuse to publish a table whose formula does not meet the documented end points."""
    if not 0 < start < full or not 0 <= rate <= 100:
        raise ValueError(f"MaxStartups {start}:{rate}:{full} is not a valid start:rate:full")
    points = [drop_probability(n, start, rate, full) for n in range(full + 2)]
    assert points[start - 1] == 0.0, "nothing is dropped below start"
    assert points[start] == rate, "the chance is rate% at start"
    assert points[full] == 100.0, "everything is dropped at full"
    assert all(a <= b for a, b in itertools.pairwise(points)), "the chance never falls as load rises"
    for n in range(full + 2):
        exact = drop_probability(n, start, rate, full)
        assert 0 <= exact - drop_percent_as_sshd(n, start, rate, full) < 1, "whole-percent rounding"


def _percent(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _retry_chance(probability: float, tries: int) -> str:
    chance = (probability / 100) ** tries * 100
    if chance == 0:
        return "0"
    if chance < 0.1:
        return "< 0.1"
    return _percent(chance)


def _list_table(header: list[str], rows: list[list[str]], widths: str | None = None) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines


def _parse_rst(directive: SphinxDirective, lines: list[str]) -> list[nodes.Node]:
    """Parse generated reStructuredText in place of ``directive``."""
    container = nodes.container()
    directive.state.nested_parse(StringList(lines, source=directive.get_source_info()[0]), 0, container)
    return list(container.children)


class MaxStartupsTable(SphinxDirective):
    """``.. maxstartups-table::`` with options ``:setting: 10:30:100``, ``:rows:``, ``:tries:``."""

    option_spec = {
        "setting": directives.unchanged,
        "rows": directives.unchanged,
        "tries": directives.positive_int,
    }

    def run(self) -> list[nodes.Node]:
        start, rate, full = (int(part) for part in self.options.get("setting", "10:30:100").split(":"))
        _check_drop_formula(start, rate, full)
        if "rows" in self.options:
            counts = [int(n) for n in self.options["rows"].split(",")]
        else:
            step = max(1, (full - start) // 9)
            counts = sorted({0, start - 1, *range(start, full, step), full})
        tries = self.options.get("tries", 5)
        rows = []
        for n in counts:
            exact = drop_probability(n, start, rate, full)
            rows.append(
                [
                    str(n),
                    f"{_percent(exact)} %",
                    f"{drop_percent_as_sshd(n, start, rate, full)} %",
                    f"{_retry_chance(exact, tries)} %",
                ]
            )
        header = [
            "Unauthenticated connections already open",
            "Chance the next one is dropped",
            "As sshd rounds it",
            f"All of {tries} tries dropped, if the load stayed this high",
        ]
        return _parse_rst(self, _list_table(header, rows, "25 25 20 30"))


# ----------------------------------------------------------------------------- backoff


class BackoffTable(SphinxDirective):
    """``.. backoff-table::`` for ``DEFAULT_BACKOFF``; option ``:failures:`` (rows, default 8)."""

    option_spec = {"failures": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        from ssh_jobs_provider.retry import DEFAULT_BACKOFF

        rows = []
        low_total = high_total = 0.0
        for failure in range(1, self.options.get("failures", 8) + 1):
            top = DEFAULT_BACKOFF.ceiling(failure)
            low_total += top / 2
            high_total += top
            rows.append(
                [
                    str(failure),
                    f"{_seconds(top / 2)} - {_seconds(top)} s",
                    f"{_seconds(low_total)} - {_seconds(high_total)} s",
                ]
            )
        header = ["After failure number", "Wait (uniformly random in)", "Total waited so far"]
        return _parse_rst(self, _list_table(header, rows, "30 35 35"))


def _seconds(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------- remote layout


class RemoteLayout(SphinxDirective):
    """``.. remote-layout::``: the job directory listing from ``protocol.scripts``'s docstring."""

    def run(self) -> list[nodes.Node]:
        from ssh_jobs_provider.protocol import scripts as remote_job

        lines = (remote_job.__doc__ or "").splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Remote layout of one job")), None)
        block: list[str] = []
        if start is not None:
            for line in lines[start + 1 :]:
                if line.strip() and not line.startswith("    "):
                    break
                block.append(line[4:].replace("``", ""))
        text = "\n".join(block).strip("\n")
        if not text:
            logger.warning(
                "remote-layout: no 'Remote layout of one job' block in protocol.scripts's docstring"
            )
            return []
        return [nodes.literal_block(text, text)]


# ----------------------------------------------------------------------------- sharing key


def _other_value(name: str, value: Any, annotation: str) -> Any:
    """A valid value of field ``name`` that differs from ``value``."""
    if name == "poll_interpreter":
        return "sh" if value != "sh" else "perl"
    if name == "host_key_policy":
        return "accept-new" if value != "accept-new" else "strict"
    if name == "proxy_jump":
        from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings

        return SSHConnectionSettings(conn_id="docs-bastion", host="bastion.example")
    if name == "share_login":  # true, false or "auto"
        return value is not True
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.0
    if "Mapping" in annotation:
        return {"kex": ["diffie-hellman-group1-sha1"]}
    if "tuple" in annotation:
        return ("aes128-ctr",)
    if "float" in annotation:
        return 1.0
    if "int" in annotation:
        return 1
    return f"{value or name}-other"


def sharing_key_fields() -> tuple[list[str], list[str]]:
    """
    Split the fields of ``SSHConnectionSettings`` into those that are part of the sharing key
    and those that are not, by changing one field at a time and comparing ``identity()``.
    """
    import dataclasses

    from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings

    base = SSHConnectionSettings(conn_id="docs", host="host.example", username="airflow")
    shared, ignored = [], []
    for field in dataclasses.fields(SSHConnectionSettings):
        value = getattr(base, field.name)
        changed = dataclasses.replace(base, **{field.name: _other_value(field.name, value, str(field.type))})
        (shared if changed.identity() != base.identity() else ignored).append(field.name)
    return shared, ignored


class SharingKey(SphinxDirective):
    """``.. sharing-key::``: which connection settings make two triggers use separate connections."""

    def run(self) -> list[nodes.Node]:
        try:
            shared, ignored = sharing_key_fields()
        except (AttributeError, TypeError, ValueError) as error:
            logger.warning("sharing-key: cannot derive the key from SSHConnectionSettings: %s", error)
            return []
        if not shared:
            logger.warning("sharing-key: SSHConnectionSettings.identity() ignores every field")
            return []
        items = ", ".join(f"``{name}``" for name in shared)
        lines = [f"Part of the key, all of them: {items}."]
        if ignored:
            lines += ["", "Not part of it: " + ", ".join(f"``{name}``" for name in ignored) + "."]
        return _parse_rst(self, lines)


# ----------------------------------------------------------------------------- roles


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _role_result(text: str, value_text: str, literal: bool) -> tuple[list[nodes.Node], list[Any]]:
    node: nodes.Node = nodes.literal(text, value_text) if literal else nodes.Text(value_text)
    return [node], []


def default_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options=None, content=None):
    """``:default:`SSHRemoteJobOperator.conn_retry_attempts``` -> ``5``."""
    class_name, _, param = text.partition(".")
    try:
        cls = getattr(importlib.import_module(CLASSES[class_name]), class_name)
        default = inspect.signature(cls).parameters[param].default
        if default is inspect.Parameter.empty:
            raise KeyError(f"{text} has no default")
    except (KeyError, AttributeError, ImportError) as error:
        message = inliner.reporter.warning(f":default:`{text}` cannot be resolved: {error}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]
    if isinstance(default, str):
        return _role_result(rawtext, f'"{default}"', True)
    if default is None or isinstance(default, bool):
        return _role_result(rawtext, str(default), True)
    return _role_result(rawtext, _plain(default), False)


def resolve_dotted(text: str) -> Any:
    """The object a dotted path names: a module attribute, or an attribute of a class in it."""
    parts = text.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no importable module in {text!r}")


def _problem(inliner: Any, rawtext: str, lineno: int, text: str) -> tuple[list[nodes.Node], list[Any]]:
    message = inliner.reporter.warning(text, line=lineno)
    return [inliner.problematic(rawtext, rawtext, message)], [message]


def value_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options=None, content=None):
    """``:value:`ssh_jobs_provider.protocol.identity.DEFAULT_BASE_DIR``` -> the constant's value.

    Class attributes work too (``module.Class.attribute``); a tuple or list is rendered as
    ``a, b and c``.
    """
    try:
        value = resolve_dotted(text)
    except (AttributeError, ImportError, ValueError) as error:
        return _problem(inliner, rawtext, lineno, f":value:`{text}` cannot be resolved: {error}")
    if isinstance(value, str):
        return _role_result(rawtext, value, True)
    if isinstance(value, (tuple, list)):
        items = [_plain(item) for item in value]
        joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        return _role_result(rawtext, joined if items else "(none)", False)
    return _role_result(rawtext, _plain(value), False)


def format_bytes(value: int) -> str:
    """``8388608`` -> ``8 MiB``, ``4096`` -> ``4 KiB``, ``1000`` -> ``1000 bytes``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} bytes"


def bytes_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options=None, content=None):
    """``:bytes:`ssh_jobs_provider.triggers.host_session.MAX_BATCH_BYTES``` -> ``8 MiB``."""
    try:
        value = resolve_dotted(text)
    except (AttributeError, ImportError, ValueError) as error:
        return _problem(inliner, rawtext, lineno, f":bytes:`{text}` cannot be resolved: {error}")
    if isinstance(value, bool) or not isinstance(value, int):
        return _problem(
            inliner, rawtext, lineno, f":bytes:`{text}` is not a whole number of bytes: {value!r}"
        )
    return _role_result(rawtext, format_bytes(value), False)


# ----------------------------------------------------------------------------- docstring check


def check_class_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Warn when a class docstring misses a constructor parameter or a templated field."""
    if what not in ("class", "exception") or not inspect.isclass(obj):
        return
    if not obj.__module__.startswith("ssh_jobs_provider."):
        return
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    wanted = [
        p.name
        for p in signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    documented: dict[str, str] = {}
    current = None
    for line in lines:
        match = _PARAM.match(line)
        if match:
            current = match.group(1)
            documented[current] = line
        elif current and line.startswith((" ", "\t")) and line.strip():
            documented[current] += " " + line.strip()
        else:
            current = None
    if not documented and not wanted:
        return
    location = f"{obj.__module__}.{obj.__qualname__}"
    for param in wanted:
        if param not in documented:
            logger.warning("%s: parameter %r is not documented in the class docstring", location, param)
    for param in documented:
        if param not in wanted:
            logger.warning("%s: docstring documents %r, which the constructor does not take", location, param)
    for field in getattr(obj, "template_fields", ()) or ():
        text = documented.get(field, "")
        if text and "templated" not in text:
            logger.warning(
                "%s: templated field %r is not marked as templated in its :param:", location, field
            )


def backoff_total_role(
    name: str, rawtext: str, text: str, lineno: int, inliner: Any, options=None, content=None
):
    """``:backoff-total:`5``` -> the range of the total wait after 5 failures, e.g. ``15.5 to 31``."""
    from ssh_jobs_provider.retry import DEFAULT_BACKOFF

    try:
        failures = int(text)
    except ValueError:
        message = inliner.reporter.warning(f":backoff-total:`{text}` needs a whole number", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]
    high = sum(DEFAULT_BACKOFF.ceiling(n) for n in range(1, failures + 1))
    return [nodes.Text(f"{_seconds(high / 2)} to {_seconds(high)}")], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("maxstartups-table", MaxStartupsTable)
    app.add_directive("backoff-table", BackoffTable)
    app.add_directive("remote-layout", RemoteLayout)
    app.add_directive("sharing-key", SharingKey)
    app.add_role("default", default_role)
    app.add_role("value", value_role)
    app.add_role("bytes", bytes_role)
    app.add_role("backoff-total", backoff_total_role)
    app.connect("autodoc-process-docstring", check_class_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
