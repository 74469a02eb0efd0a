"""
Turn a benchmark's raw JSON into the summary table (Markdown and reStructuredText) and plots.

Usage (re-render an earlier run): python dev/bench/report.py dev/out/bench/<timestamp>/raw.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import submit_report

PLOTS = ("burst.png", "monitor.png", "connections.png", "end_to_end.png")
#: What the docs show of the burst and monitor scenarios, and of the scaling scenario.
MAIN_FILES = ("results.md", "results.rst.inc", "summary.json", *PLOTS)
SCALING_FILES = ("scaling.rst.inc", "scaling.png")
PUBLISHED = (*MAIN_FILES, *SCALING_FILES, *submit_report.SUBMIT_FILES)
COLORS = {"ours": "#1f77b4", "upstream": "#d62728"}
# Distinct markers and line styles keep both visible where their values coincide.
STYLES: dict[str, dict[str, Any]] = {
    "ours": {"marker": "o", "linestyle": "-"},
    "upstream": {"marker": "s", "linestyle": "--", "markerfacecolor": "none"},
}


# ------------------------------------------------------------------------------ summary


def _median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def _burst_figures(row: dict[str, Any]) -> dict[str, float]:
    sshd = row.get("sshd", {})
    return {
        "failed": row.get("failed", row.get("n", 0)),
        "handshakes": sshd.get("accepted", 0),
        "attempts": sshd.get("connections", 0) + sshd.get("drops", 0),
        "drops": sshd.get("drops", 0),
        "channels": sshd.get("sessions", 0),
        "peak_connections": row.get("peak_connections", 0),
        "wall_seconds": row.get("wall_seconds", float("nan")),
        "server_cpu_seconds": row.get("server_cpu_seconds", 0.0),
    }


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    impls = sorted(
        {row["impl"] for row in raw.get("bursts", []) + raw.get("monitor", []) + raw.get("scaling", [])},
        key=["ours", "upstream"].index,
    )
    bursts: dict[str, Any] = {}
    for n in sorted({row["n"] for row in raw.get("bursts", [])}):
        bursts[str(n)] = {}
        for impl in impls:
            rows = [_burst_figures(r) for r in raw["bursts"] if r["n"] == n and r["impl"] == impl]
            if not rows:
                continue
            bursts[str(n)][impl] = {
                "repeats": len(rows),
                **{key: _median(r[key] for r in rows) for key in rows[0]},
                "min": {key: min(r[key] for r in rows) for key in rows[0]},
                "max": {key: max(r[key] for r in rows) for key in rows[0]},
            }
    monitor: dict[str, Any] = {}
    for row in raw.get("monitor", []):
        n = row["n"]
        submit, watch, complete = row["submit"], row["watch"], row["complete"]
        minutes = max(watch.get("wall_seconds", 0.0), 1e-9) / 60
        phases = {name: row[name]["sshd"] for name in ("submit", "watch", "complete")}
        # A task succeeds end to end when its submit, its one event (exit 0, full output)
        # and its completion (cleanup) all did.
        failed = n - row.get("tasks_succeeded", 0)
        monitor.setdefault(f"{row['poll']:g}", {})[row["impl"]] = {
            "n": n,
            "window_seconds": row["window_seconds"],
            "peak_connections": watch.get("peak_connections", 0),
            "handshakes": watch["sshd"]["accepted"],
            "drops": watch["sshd"]["drops"],
            "channel_opens": watch["sshd"]["sessions"],
            "channel_opens_per_minute": watch["sshd"]["sessions"] / minutes,
            "session_refusals": watch["sshd"]["session_refusals"],
            "cpu_seconds": watch.get("cpu_seconds", float("nan")),
            "rss_peak_mib": watch.get("rss_peak_kib", 0) / 1024,
            "rss_growth_mib": (watch.get("rss_peak_kib", 0) - watch.get("rss_baseline_kib", 0)) / 1024,
            "events_correct": watch.get("correct", 0),
            "reconnect_warnings": watch.get("reconnect_warnings", 0),
            "server_cpu_seconds": watch.get("server_cpu_seconds", 0.0),
            "max_loop_lag_seconds": watch.get("max_loop_lag_seconds", float("nan")),
            "watch_seconds": watch.get("wall_seconds", float("nan")),
            "submit_failed": submit.get("failed", n),
            "complete_failed": complete.get("failed", 0),
            "job_dirs_left": row["job_dirs_left"],
            "tasks_failed_end_to_end": failed,
            "phases": {
                name: {"handshakes": c["accepted"], "channels": c["sessions"], "drops": c["drops"]}
                for name, c in phases.items()
            },
            "handshakes_per_task": sum(c["accepted"] for c in phases.values()) / n,
            "channels_per_task": sum(c["sessions"] for c in phases.values()) / n,
            "server_cpu_total_seconds": sum(row[name].get("server_cpu_seconds", 0.0) for name in phases),
            "connection_samples": watch.get("connection_samples", []),
        }
    scaling: dict[str, Any] = {}
    for row in raw.get("scaling", []):
        scaling.setdefault(str(row["n"]), {})[row["impl"]] = _scaling_figures(row)
    return {
        "impls": impls,
        "bursts": bursts,
        "monitor": monitor,
        "scaling": scaling,
        "submit_modes": raw.get("submit_modes", []),
    }


def _scaling_figures(row: dict[str, Any]) -> dict[str, Any]:
    """One N and implementation of the scaling scenario; per job-poll costs and latencies."""
    watch = row["watch"]
    watched = watch.get("n", 0)  # the triggers that ran: one per job submitted
    seconds = max(row.get("watched_seconds", row["window_seconds"]), 0.0)
    job_polls = watched * seconds / row["poll"]
    latencies = row.get("event_latencies", [])

    def per_job_poll_ms(cpu_seconds: float) -> float:
        return cpu_seconds * 1000 / job_polls if job_polls > 0 else float("nan")

    return {
        "n": row["n"],
        "impl": row["impl"],
        "poll": row["poll"],
        "watched": watched,
        "watched_seconds": seconds,
        "job_polls": job_polls,
        "events_correct": watch.get("correct", 0),
        "events_missing": watched - len(latencies),
        "tasks_succeeded": row.get("tasks_succeeded", 0),
        "submit_failed": row["submit"].get("failed", row["n"]),
        "complete_failed": row["complete"].get("failed", 0),
        "job_dirs_left": row.get("job_dirs_left", 0),
        "submit_seconds": row["submit"].get("wall_seconds", float("nan")),
        "submit_overran": row.get("submit_overran", False),
        "peak_connections": watch.get("peak_connections", 0),
        "handshakes": watch["sshd"]["accepted"],
        "drops": watch["sshd"]["drops"],
        "channel_opens": watch["sshd"]["sessions"],
        "server_cpu_seconds": watch.get("server_cpu_seconds", 0.0),
        "cpu_seconds": watch.get("cpu_seconds", float("nan")),
        "rss_peak_mib": watch.get("rss_peak_kib", 0) / 1024,
        "server_cpu_ms_per_job_poll": per_job_poll_ms(watch.get("server_cpu_seconds", 0.0)),
        "triggerer_cpu_ms_per_job_poll": per_job_poll_ms(watch.get("cpu_seconds", float("nan"))),
        "latency_p50": _median(latencies),
        "latency_max": max(latencies, default=float("nan")),
        "max_loop_lag_seconds": watch.get("max_loop_lag_seconds", float("nan")),
        "reconnect_warnings": watch.get("reconnect_warnings", 0),
        "problems": {
            phase: row[phase].get("errors", {})
            for phase in ("submit", "watch", "complete")
            if row[phase].get("errors")
        },
    }


# ------------------------------------------------------------------------------ table


def _fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    if digits == 0 and float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.{digits or 1}f}"


def _ratio(ours: float, upstream: float) -> str:
    if ours != ours or upstream != upstream:
        return "n/a"
    if upstream == 0:
        return "=" if ours == 0 else "n/a (upstream 0)"
    ratio = ours / upstream
    # Two decimals, or two significant digits for small ratios (1 of 200 is 0.005, not 0.00).
    return f"{ratio:.2f}" if ratio >= 0.1 or ratio == 0 else f"{ratio:.2g}"


def table_rows(summary: dict[str, Any], meta: dict[str, Any]) -> list[list[str]]:
    """Rows of (scenario, figure, ours, upstream, ours/upstream)."""
    rows: list[list[str]] = []

    def add(
        scenario: str,
        figure: str,
        data: dict[str, Any],
        key: str | Callable[[dict[str, Any]], float],
        digits: int = 0,
    ) -> None:
        values = {}
        for impl in ("ours", "upstream"):
            if impl in data:
                values[impl] = key(data[impl]) if callable(key) else data[impl][key]
        ours, upstream = values.get("ours", float("nan")), values.get("upstream", float("nan"))
        rows.append([scenario, figure, _fmt(ours, digits), _fmt(upstream, digits), _ratio(ours, upstream)])

    for n, data in summary["bursts"].items():
        repeats = max(d["repeats"] for d in data.values())
        scenario = f"Submit burst, N={n} (median of {repeats})"
        add(scenario, "failed submits", data, "failed")
        add(scenario, "handshakes (accepted logins)", data, "handshakes")
        add(scenario, "connection attempts (admitted + dropped)", data, "attempts")
        add(scenario, "MaxStartups drops", data, "drops")
        add(scenario, "channel opens", data, "channels")
        add(scenario, "burst wall time, s (supporting)", data, "wall_seconds", 1)
    for poll, data in summary["monitor"].items():
        n = next(iter(data.values()))["n"]
        scenario = f"Monitoring, N={n}, poll {poll} s"
        add(scenario, "peak concurrent TCP connections", data, "peak_connections")
        add(scenario, "handshakes", data, "handshakes")
        add(scenario, "MaxStartups drops", data, "drops")
        add(scenario, "channel opens per minute", data, "channel_opens_per_minute")
        add(scenario, "triggerer CPU seconds", data, "cpu_seconds", 1)
        add(scenario, "triggerer peak RSS, MiB", data, "rss_peak_mib")
        add(scenario, "triggerer RSS growth while watching, MiB", data, "rss_growth_mib", 1)
        add(scenario, "server CPU seconds (sshd + remote shells)", data, "server_cpu_seconds", 1)
        add(scenario, f"events correct (of {n})", data, "events_correct")
    for poll, data in summary["monitor"].items():
        scenario = f"End to end per task, poll {poll} s"
        add(scenario, "handshakes per task (submit + monitor + cleanup)", data, "handshakes_per_task", 2)
        add(scenario, "channel opens per task", data, "channels_per_task", 2)
        add(scenario, "tasks not successful", data, "tasks_failed_end_to_end")
        add(scenario, "job directories left behind", data, "job_dirs_left")
    return rows


HEADER = ["Scenario", "Figure", "ours", "upstream", "ours/upstream"]
#: Figures where more is better; for every other figure less is better.
HIGHER_IS_BETTER = ("events correct",)


def not_ahead(rows: list[list[str]]) -> list[str]:
    """
    The figures on which ours is behind upstream, or level with it (both perfect is not listed:
    zero failures each, or every event correct for both).
    """
    found = []
    for scenario, figure, ours, upstream, _ in rows:
        try:
            a, b = float(ours), float(upstream)
        except ValueError:
            continue
        if figure.startswith(HIGHER_IS_BETTER):
            best = float(figure.rsplit("of ", 1)[-1].rstrip(")"))
            behind, level = a < b, a == b and a < best
        else:
            behind, level = a > b, a == b and a != 0
        if behind or level:
            found.append(
                f"{scenario}: {figure}: ours {ours}, upstream {upstream}" + (" (level)" if level else "")
            )
    return found


def markdown_table(rows: list[list[str]], header: list[str] = HEADER, text_columns: int = 2) -> str:
    """A Markdown table; the first ``text_columns`` are left-aligned, the numbers right-aligned."""
    aligns = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    previous = None
    for row in rows:
        scenario = row[0] if row[0] != previous else ""
        previous = row[0]
        lines.append("| " + " | ".join([scenario, *row[1:]]) + " |")
    return "\n".join(lines)


def rst_table(rows: list[list[str]], header: list[str] = HEADER, widths: str = "30 40 10 10 10") -> str:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    previous = None
    for row in [header, *rows]:
        scenario = row[0] if row[0] != previous or row is header else ""
        previous = row[0]
        cells = [scenario or " ", *row[1:]]
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ scaling table

SCALING_HEADER = [
    "N",
    "impl",
    "tasks correct",
    "peak connections",
    "handshakes",
    "MaxStartups drops",
    "channel opens",
    "server CPU, s",
    "triggerer CPU, s",
    "triggerer RSS peak, MiB",
    "server CPU per job-poll, ms",
    "triggerer CPU per job-poll, ms",
    "job end → event p50, s",
    "job end → event max, s",
]
SCALING_WIDTHS = "6 9 7 7 7 7 7 7 7 7 8 8 8 8"


def _sig(value: float) -> str:
    """Two significant digits below 10 (0.052, 1.3), one decimal below 100, whole numbers above."""
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}"


def scaling_rows(summary: dict[str, Any]) -> list[list[str]]:
    """A row per N and implementation, smallest N first."""
    rows = []
    for n in sorted(summary["scaling"], key=int):
        for impl in summary["impls"]:
            d = summary["scaling"][n].get(impl)
            if d is None:
                continue
            rows.append(
                [
                    n,
                    impl,
                    f"{d['events_correct']}/{d['n']}",
                    _fmt(d["peak_connections"]),
                    _fmt(d["handshakes"]),
                    _fmt(d["drops"]),
                    _fmt(d["channel_opens"]),
                    _fmt(d["server_cpu_seconds"], 1),
                    _fmt(d["cpu_seconds"], 1),
                    _fmt(d["rss_peak_mib"]),
                    _sig(d["server_cpu_ms_per_job_poll"]),
                    _sig(d["triggerer_cpu_ms_per_job_poll"]),
                    f"{d['latency_p50']:.2f}" if d["latency_p50"] == d["latency_p50"] else "n/a",
                    f"{d['latency_max']:.2f}" if d["latency_max"] == d["latency_max"] else "n/a",
                ]
            )
    return rows


def scaling_notes(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """What the scaling columns mean, then whatever went wrong in the run, row by row."""
    s = meta.get("settings", {})
    data = [d for by_impl in summary["scaling"].values() for d in by_impl.values()]
    watched = [d["watched_seconds"] for d in data]
    notes = [
        "tasks correct: exactly one event, status success, exit code 0, and the task's log lines "
        "`job <i> line 0`, `job <i> line 1`, ... without gap or repeat, then `job <i> end`.",
        "job-polls = N x (watched seconds / poll interval), where watched seconds runs from the start "
        "of the triggers (the triggerer driver's clock) to the jobs' common end"
        + _seconds_range(watched)
        + "; CPU per job-poll = CPU seconds x 1000 / job-polls. Server CPU is the CPU time of sshd "
        "and every process it ran (per-connection sshd, remote shells) during the watch phase; "
        "triggerer CPU that of the one process running all N triggers.",
        "job end → event: the time of the task's event (wall clock, in the triggerer driver) minus "
        "the instant at which every job writes its last line; p50 and max over the tasks that got an event. "
        "Even a poll that costs nothing comes up to one poll interval after a job's end; ours polls "
        "all jobs of a host in one tick, so at small N its p50 and max are one draw of that phase "
        "(anywhere from 0 to the poll interval). What lies beyond the poll interval is the poll's own cost.",
        f"upstream is measured up to N = {s.get('scaling_upstream_max', '?')} only.",
    ]
    for d in data:
        notes.extend(_scaling_trouble(d))
    return notes


def _seconds_range(seconds: list[float]) -> str:
    low, high = min(seconds, default=0.0), max(seconds, default=0.0)
    if not seconds:
        return ""
    if f"{low:.1f}" == f"{high:.1f}":
        return f" ({low:.1f} s in this run)"
    return f" ({low:.1f} to {high:.1f} s in this run)"


def _scaling_trouble(d: dict[str, Any]) -> list[str]:
    row = f"N={d['n']}, {d['impl']}"
    found = []
    if d["submit_overran"]:
        found.append(f"submits took {d['submit_seconds']:.0f} s, longer than allowed: a shorter watch")
    for key, what in (
        ("submit_failed", "submits failed"),
        ("events_missing", "triggers without an event"),
        ("complete_failed", "completions (cleanup) failed"),
        ("job_dirs_left", "job directories left behind"),
    ):
        if d[key]:
            found.append(f"{d[key]} {what}")
    for phase, kinds in d.get("problems", {}).items():
        found.extend(f"{phase}: {count} tasks: {kind}" for kind, count in kinds.items())
    return [f"{row}: " + "; ".join(found)] if found else []


def scaling_markdown(summary: dict[str, Any], meta: dict[str, Any], context: list[str]) -> str:
    notes = [f"- {note}" for note in scaling_notes(summary, meta)]
    table = markdown_table(scaling_rows(summary), SCALING_HEADER)
    return "\n".join(["\n\n".join(context), "", table, "", *notes, ""])


def scaling_rst(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The include of the docs' scaling section: its own context lines, the table and the notes."""
    context = "\n\n".join(_rst_literals(line) for line in context_lines(meta, "scaling"))
    notes = "\n".join(f"- {_rst_literals(note)}" for note in scaling_notes(summary, meta))
    table = rst_table(scaling_rows(summary), SCALING_HEADER, SCALING_WIDTHS)
    return f"{context}\n\n{table}\n{notes}\n"


def _rst_literals(text: str) -> str:
    return text.replace("`", "``")


def load_range(raw: dict[str, Any]) -> tuple[float, float] | None:
    """Lowest and highest 1-minute load average seen just before a measurement started."""
    loads = [row["load_before"][0] for row in raw.get("bursts", []) if "load_before" in row]
    for row in raw.get("monitor", []) + raw.get("scaling", []):
        loads.extend(
            row[phase]["load_before"][0]
            for phase in ("submit", "watch", "complete")
            if "load_before" in row[phase]
        )
    return (min(loads), max(loads)) if loads else None


def context_lines(meta: dict[str, Any], scenario: str = "main") -> list[str]:
    """How, where and with what the run was made; its last line is about ``scenario``'s settings."""
    m = meta.get("machine", {})
    s = meta.get("settings", {})
    v = meta.get("versions", {})
    git = meta.get("git", {})
    ours_v = v.get("ours", {}).get("airflow-provider-ssh-jobs", "?")
    up_v = v.get("upstream", {}).get("apache-airflow-providers-ssh", "?")
    source = f"commit {git.get('commit', '?')}"
    if git.get("ours_src"):
        source += f", package from {git['ours_src']}"
    elif git.get("provider_changes"):
        source += " plus uncommitted changes under provider/"
    incomplete = [] if meta.get("complete", True) else ["**Incomplete run: it was interrupted.**"]
    return [
        *incomplete,
        f"Command: `{str(meta.get('command', 'bash dev/bench/run.sh')).strip()}`"
        + (" (quick mode)" if meta.get("quick") else ""),
        f"ours: airflow-provider-ssh-jobs {ours_v} ({source}); upstream: apache-airflow-providers-ssh {up_v}; "
        f"both with apache-airflow {v.get('ours', {}).get('apache-airflow', '?')}, "
        f"asyncssh {v.get('ours', {}).get('asyncssh', '?')}, paramiko {v.get('ours', {}).get('paramiko', '?')}, "
        f"Python {m.get('python', '?')}.",
        f"Machine: {m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), {m.get('memory_gib', '?')} GiB, "
        f"{m.get('os', '?')}, Linux {m.get('kernel', '?')}; 1-minute load average "
        f"{meta.get('load_start', [0])[0]:.2f} when the run started"
        + (
            f", {meta['load_range'][0]:.1f} to {meta['load_range'][1]:.1f} just before the measurements"
            + (" (the bursts themselves raise it)" if scenario == "main" else "")
            if meta.get("load_range")
            else ""
        )
        + "; other work was running on the machine.",
        f"Server: {meta.get('sshd_banner', '?')} on 127.0.0.1, MaxStartups {s.get('max_startups')}, "
        f"MaxSessions {s.get('max_sessions')}, LoginGraceTime {s.get('login_grace_time', 30)}, LogLevel VERBOSE, "
        "a fresh sshd per scenario.",
        f"Run {meta.get('started', '?')}, {meta.get('duration_seconds', 0) / 60:.1f} min; "
        + {"scaling": scaling_settings, "submit-modes": submit_modes_settings}.get(
            scenario, monitor_settings
        )(s),
    ]


def submit_modes_settings(s: dict[str, Any]) -> str:
    ns = ", ".join(str(n) for n in s.get("submit_modes_n", []))
    return (
        f"submit modes with N = {ns}, a fresh sshd per N; jobs write two lines and end at once; "
        f"worker modes in at most {s.get('submit_modes_workers', '?')} worker processes."
    )


def monitor_settings(s: dict[str, Any]) -> str:
    return (
        f"watched jobs run {s.get('job_seconds', '?'):g} s, "
        f"submitted and cleaned up by {s.get('submit_workers', '?')} worker processes."
    )


def scaling_settings(s: dict[str, Any]) -> str:
    ns = ", ".join(str(n) for n in s.get("scaling_n", []))
    return (
        f"scaling run with N = {ns} (upstream up to N = {s.get('scaling_upstream_max', '?')}), "
        f"poll {s.get('scaling_poll', '?'):g} s, a fresh sshd per N; the jobs write a line a second and "
        f"all end {s.get('scaling_job_seconds', '?'):g} s after the triggerer process is started; "
        f"submitted and cleaned up by {s.get('submit_workers', '?')} worker processes."
    )


# ------------------------------------------------------------------------------ plots


def plots(summary: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')", file=sys.stderr)
        return []
    made = []
    impls = summary["impls"]

    if summary["bursts"]:
        ns = sorted(int(n) for n in summary["bursts"])
        figures = [("failed", "failed submits"), ("handshakes", "handshakes"), ("drops", "MaxStartups drops")]
        fig, axes = plt.subplots(1, len(figures), figsize=(12, 3.6))
        for ax, (key, title) in zip(axes, figures, strict=True):
            for impl in impls:
                pts = [(n, summary["bursts"][str(n)][impl]) for n in ns if impl in summary["bursts"][str(n)]]
                xs = [n for n, _ in pts]
                med = [d[key] for _, d in pts]
                low = [d[key] - d["min"][key] for _, d in pts]
                high = [d["max"][key] - d[key] for _, d in pts]
                ax.errorbar(
                    xs, med, yerr=[low, high], capsize=3, label=impl, color=COLORS.get(impl), **STYLES[impl]
                )
            ax.set_title(title)
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
            ax.set_xlabel("simultaneous submits (N)")
            ax.set_xticks(ns)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("Submit burst: median, range over repeats")
        fig.tight_layout()
        fig.savefig(out_dir / "burst.png", dpi=110)
        plt.close(fig)
        made.append("burst.png")

    if summary["monitor"]:
        polls = list(summary["monitor"])
        figures = [
            ("peak_connections", "peak concurrent connections"),
            ("channel_opens_per_minute", "channel opens per minute"),
            ("cpu_seconds", "triggerer CPU seconds"),
            ("server_cpu_seconds", "server CPU seconds"),
        ]
        fig, axes = plt.subplots(1, len(figures), figsize=(14, 3.6))
        width = 0.8 / max(1, len(impls))
        for ax, (key, title) in zip(axes, figures, strict=True):
            for i, impl in enumerate(impls):
                xs = [p + (i - (len(impls) - 1) / 2) * width for p in range(len(polls))]
                ys = [summary["monitor"][poll].get(impl, {}).get(key, 0) for poll in polls]
                bars = ax.bar(xs, ys, width, label=impl, color=COLORS.get(impl))
                ax.bar_label(bars, labels=[_fmt(y, 0 if y >= 10 else 1) for y in ys], fontsize=7, padding=1)
            ax.set_xticks(range(len(polls)), [f"poll {p} s" for p in polls])
            ax.set_title(title)
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend()
        n = next(iter(next(iter(summary["monitor"].values())).values()))["n"]
        fig.suptitle(f"Monitoring {n} jobs from one triggerer process")
        fig.tight_layout()
        fig.savefig(out_dir / "monitor.png", dpi=110)
        plt.close(fig)
        made.append("monitor.png")

        fig, axes = plt.subplots(1, len(polls), figsize=(6 * len(polls), 3.6), squeeze=False)
        for ax, poll in zip(axes[0], polls, strict=True):
            for impl in impls:
                samples = summary["monitor"][poll].get(impl, {}).get("connection_samples", [])
                if samples:
                    ax.plot(
                        [t for t, _ in samples], [c for _, c in samples], label=impl, color=COLORS.get(impl)
                    )
            ax.set_title(f"connections to sshd while monitoring, poll {poll} s")
            ax.set_xlabel("seconds since the triggerer process started")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "connections.png", dpi=110)
        plt.close(fig)
        made.append("connections.png")

        fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
        phases = ("submit", "watch", "complete")
        labels = {"submit": "submit", "watch": "monitor", "complete": "cleanup"}
        hatches = {"submit": "", "watch": "//", "complete": ".."}
        for ax, (key, title) in zip(
            axes, [("handshakes", "handshakes per task"), ("channels", "channel opens per task")], strict=True
        ):
            ticks = []
            x = 0
            for poll in polls:
                for impl in impls:
                    data = summary["monitor"][poll].get(impl)
                    if not data:
                        continue
                    bottom = 0.0
                    for phase in phases:
                        value = data["phases"][phase][key] / data["n"]
                        ax.bar(
                            x,
                            value,
                            0.7,
                            bottom=bottom,
                            color=COLORS.get(impl),
                            hatch=hatches[phase],
                            edgecolor="white",
                            label=labels[phase] if x == 0 else None,
                        )
                        bottom += value
                    ticks.append((x, f"{impl}\npoll {poll} s"))
                    x += 1
                x += 0.5
            ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
            ax.set_title(title + " (submit / monitor / cleanup)")
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out_dir / "end_to_end.png", dpi=110)
        plt.close(fig)
        made.append("end_to_end.png")

    if summary["scaling"]:
        scaling_plot(plt, summary, out_dir)
        made.append("scaling.png")
    if summary["submit_modes"]:
        submit_report.plot(plt, summary["submit_modes"], out_dir)
        made.append("submit_modes.png")
    return made


def scaling_plot(plt: Any, summary: dict[str, Any], out_dir: Path) -> None:
    """
    Four panels against N (log axis): CPU per job-poll on the server and in the triggerer and
    the job end -> event latency on log axes; the triggerer's RSS on a linear axis from 0, as
    most of it is the interpreter and Airflow, the same at every N.
    """
    ns = sorted(int(n) for n in summary["scaling"])
    poll = next(iter(next(iter(summary["scaling"].values())).values()))["poll"]
    panels = [
        (["server_cpu_ms_per_job_poll"], "server CPU per job-poll, ms (log)"),
        (["triggerer_cpu_ms_per_job_poll"], "triggerer CPU per job-poll, ms (log)"),
        (["latency_p50", "latency_max"], "job end → event, s (log; p50 solid, max dotted)"),
        (["rss_peak_mib"], "triggerer peak RSS, MiB (linear)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.9))
    for ax, (keys, title) in zip(axes, panels, strict=True):
        values = _scaling_series(ax, summary, ns, keys)
        if "latency_p50" in keys:
            # An event comes up to one poll interval after its job's end even if a poll costs nothing.
            ax.axhline(poll, color="grey", linestyle="-.", linewidth=0.8, label=f"poll interval ({poll:g} s)")
            values.append(poll)
        _scaling_axes(ax, ns, values, log_y="rss_peak_mib" not in keys)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"Watching N jobs from one triggerer process, poll {poll:g} s")
    fig.tight_layout()
    fig.savefig(out_dir / "scaling.png", dpi=110)
    plt.close(fig)


def _scaling_series(ax: Any, summary: dict[str, Any], ns: list[int], keys: list[str]) -> list[float]:
    """One line per implementation and key; returns the values plotted."""
    values: list[float] = []
    for impl in summary["impls"]:
        for key in keys:
            # Points without a positive value (nothing measured) have no place on a log axis.
            pts = [
                (n, summary["scaling"][str(n)][impl][key])
                for n in ns
                if impl in summary["scaling"][str(n)] and summary["scaling"][str(n)][impl][key] > 0
            ]
            if not pts:
                continue
            style = {**STYLES[impl], **({"linestyle": ":"} if key == "latency_max" else {})}
            label = impl + {"latency_max": " max", "latency_p50": " p50"}.get(key, "")
            ax.plot([n for n, _ in pts], [v for _, v in pts], label=label, color=COLORS.get(impl), **style)
            values.extend(v for _, v in pts)
    return values


def _scaling_axes(ax: Any, ns: list[int], values: list[float], log_y: bool) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("jobs watched at once (N)")
    ax.grid(alpha=0.3)
    if not log_y:
        ax.set_ylim(bottom=0, top=max(values, default=1.0) * 1.15)
    elif values:
        # Ticks at 1, 2, 5 per decade over at least a factor 4: every panel has labelled ticks.
        ax.set_yscale("log")
        ax.set_ylim(min(values) / 2, max(values) * 2)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())


# ------------------------------------------------------------------------------ files


def write_report(raw: dict[str, Any], out_dir: Path) -> str:
    summary = summarise(raw)
    meta = {**raw.get("meta", {}), "load_range": load_range(raw)}
    rows = table_rows(summary, meta)
    context = context_lines(meta)
    behind = not_ahead(rows)
    behind_text = (
        ["Where ours is not ahead of upstream in this run:", "", *[f"- {line}" for line in behind]]
        if behind
        else ["Ours is ahead of or level at zero with upstream on every figure of this run."]
    )
    # The main table, unless only the scaling or the submit-modes scenario ran.
    main_ran = bool(
        summary["bursts"] or summary["monitor"] or not (summary["scaling"] or summary["submit_modes"])
    )
    md = "\n".join(["\n\n".join(context), "", markdown_table(rows), "", *behind_text, ""]) if main_ran else ""
    if main_ran:
        rst_context = "\n\n".join(line.replace("`", "``") for line in context)
        (out_dir / "results.rst.inc").write_text(
            rst_context + "\n\n" + rst_table(rows) + "\n" + "\n".join(behind_text) + "\n"
        )
    if summary["scaling"]:
        # After the main table only the scaling settings are new; alone, it needs all the context.
        scaling_context = context_lines(meta, "scaling")[-1:] if main_ran else context_lines(meta, "scaling")
        heading = "## Scaling: watching N jobs from one triggerer\n\n" if main_ran else ""
        md += ("\n" if main_ran else "") + heading + scaling_markdown(summary, meta, scaling_context)
        (out_dir / "scaling.rst.inc").write_text(scaling_rst(summary, meta))
    if summary["submit_modes"]:
        settings = meta.get("settings", {})
        context = context_lines(meta, "submit-modes")
        md += "\n## Submitting from the workers or from the triggerer\n\n" + "\n\n".join(context) + "\n\n"
        md += submit_report.markdown(summary["submit_modes"], settings)
        (out_dir / "submit_modes.rst.inc").write_text(
            submit_report.rst(summary["submit_modes"], settings, context)
        )
    (out_dir / "results.md").write_text(md)
    public = {
        "meta": {k: v for k, v in meta.items() if k != "sshd_config"},
        "summary": {
            **summary,
            "monitor": {
                poll: {
                    impl: {k: v for k, v in d.items() if k != "connection_samples"}
                    for impl, d in data.items()
                }
                for poll, data in summary["monitor"].items()
            },
        },
        "table": [dict(zip(HEADER, row, strict=True)) for row in rows],
        "scaling_table": [dict(zip(SCALING_HEADER, row, strict=True)) for row in scaling_rows(summary)],
    }
    (out_dir / "summary.json").write_text(json.dumps(public, indent=1, default=str))
    plots(summary, out_dir)
    return md


def publish(out_dir: Path, docs_dir: Path) -> None:
    """
    Copy the run's tables and plots into the docs, those of the scenarios that ran only: a run
    of ``--only scaling`` leaves the burst and monitor results of an earlier run in place.
    """
    summary = json.loads((out_dir / "summary.json").read_text()).get("summary", {})
    names = [
        *(MAIN_FILES if summary.get("bursts") or summary.get("monitor") else ()),
        *(SCALING_FILES if summary.get("scaling") else ()),
        *(submit_report.SUBMIT_FILES if summary.get("submit_modes") else ()),
    ]
    docs_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = out_dir / name
        if source.exists():
            shutil.copy2(source, docs_dir / name)


def main() -> None:
    raw_path = Path(sys.argv[1])
    print(write_report(json.loads(raw_path.read_text()), raw_path.parent))


if __name__ == "__main__":
    main()
