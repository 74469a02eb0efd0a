"""Apache Airflow provider: detached remote jobs over SSH, built for large fan-outs."""

from __future__ import annotations

__version__ = "0.1.0"
