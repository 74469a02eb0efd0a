"""The submit-modes scenario's table (Markdown and reStructuredText) and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUBMIT_FILES = ("submit_modes.rst.inc", "submit_modes.png")
LABELS = {
    "upstream": "upstream (worker)",
    "ours": "ours (worker)",
    "ours-alone": "ours (worker, share_login false)",
    "ours-shared": "ours (worker, share_login true)",
    "ours-triggerer": "ours (triggerer)",
}
HEADER = [
    "N",
    "submitted from",
    "failures",
    "handshakes",
    "MaxStartups drops",
    "channel opens",
    "server CPU, s",
    "server CPU per job, ms",
    "client CPU, s",
    "first execute() to last job started, s",
    "jobs started once",
]
WIDTHS = "6 16 8 10 10 10 8 8 8 12 10"
COLORS = {
    "upstream": "#d62728",
    "ours": "#ff7f0e",
    "ours-alone": "#8c564b",
    "ours-shared": "#2ca02c",
    "ours-triggerer": "#1f77b4",
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return str(value)


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in sorted(rows, key=lambda r: (r["n"], list(LABELS).index(r["impl"]))):
        opens = _cell(row["channel_opens"])
        if row.get("ticks"):
            opens += f" (in {row['ticks']} s)"
        started = f"{row['jobs_started_once']}/{row['n']}"
        if row["jobs_started_twice_or_more"]:
            started += f", {row['jobs_started_twice_or_more']} twice"
        out.append(
            [
                str(row["n"]),
                LABELS[row["impl"]],
                _cell(row["failures"]),
                _cell(row["handshakes"]),
                _cell(row["drops"]),
                opens,
                _cell(row["server_cpu_seconds"]),
                _cell(round(1000 * row["server_cpu_seconds"] / row["n"], 1)),
                _cell(row["client_cpu_seconds"]),
                _cell(row["first_execute_to_last_start_seconds"]),
                started,
            ]
        )
    return out


def notes(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """What the columns mean, then whatever went wrong in the run."""
    workers = settings.get("submit_modes_workers", "?")
    found = [
        f"Worker modes: each task's `execute()` in a worker process of its own, at most {workers} at once "
        "(more tasks take turns), all released together; their handshakes are the submits only (the watch "
        "would add one per triggerer). Triggerer mode: every `execute()` (no network) one after the other, "
        "then every trigger in ONE triggerer process, submitting and watching; its figures cover both.",
        "Server CPU: sshd and every process it reaped (handshakes, sessions, the submits' tools); a job's "
        "detached wrapper (and the job) counts only when it ended before the session that started it. "
        "Jobs started once: counted on the host, from the line each job writes when it starts. "
        "Client CPU: the worker processes' summed, or the triggerer process's (its executes included).",
    ]
    for row in rows:
        if row.get("first_tick_to_last_start_seconds") is not None:
            found.append(
                f"N={row['n']} {LABELS[row['impl']]}: the last job started "
                f"{row['first_tick_to_last_start_seconds']} s after the host session's first tick "
                f"(its first batch: the login, then the exec), {row.get('first_to_last_start_seconds')} s "
                "after the first job did."
            )
        if row.get("errors"):
            found.append(f"N={row['n']} {LABELS[row['impl']]}: errors {row['errors']}")
        if row.get("driver_exit"):
            found.append(f"N={row['n']} {LABELS[row['impl']]}: driver exit status {row['driver_exit']}")
    return found


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    table = table_rows(rows)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes(rows, settings)) + "\n"


def rst(rows: list[dict[str, Any]], settings: dict[str, Any], context: list[str]) -> str:
    table = table_rows(rows)
    out = [
        *(line.replace("`", "``") + "\n" for line in context),
        ".. list-table::",
        "   :header-rows: 1",
        f"   :widths: {WIDTHS}",
        "",
    ]
    for row in [HEADER, *table]:
        out.append(f"   * - {row[0]}")
        out.extend(f"     - {cell}" for cell in row[1:])
    out.append("")
    out.extend(f"- {note.replace('`', '``')}" for note in notes(rows, settings))
    return "\n".join(out) + "\n"


def plot(plt: Any, rows: list[dict[str, Any]], out_dir: Path) -> None:
    """Handshakes, channel opens and server CPU per N, one bar per mode (log scale)."""
    ns = sorted({r["n"] for r in rows})
    keys = [
        ("handshakes", "handshakes"),
        ("channel_opens", "channel opens"),
        ("server_cpu_seconds", "server CPU, s"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(13, 4.2))
    width = 0.8 / len(LABELS)
    for ax, (key, title) in zip(axes, keys, strict=True):
        for position, impl in enumerate(LABELS):
            values = [next((r[key] for r in rows if r["n"] == n and r["impl"] == impl), 0) for n in ns]
            xs = [i + (position - (len(LABELS) - 1) / 2) * width for i in range(len(ns))]
            bars = ax.bar(xs, [max(v, 0.01) for v in values], width, label=LABELS[impl], color=COLORS[impl])
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(
                    _cell(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns])
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("Submitting N mapped tasks: from the workers, or from the triggerer (MaxStartups 10:30:100)")
    fig.tight_layout()
    fig.savefig(out_dir / "submit_modes.png", dpi=110)
    plt.close(fig)
