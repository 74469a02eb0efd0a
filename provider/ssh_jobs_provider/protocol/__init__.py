"""
The remote-job protocol's shell side: the POSIX ``sh`` programs every remote step runs.

``sh/`` holds them as real ``.sh`` files (checked by ``shellcheck`` in the test command);
:mod:`ssh_jobs_provider.utils.remote_job` and :mod:`ssh_jobs_provider.utils.batch_poll`
assemble them with the quoted arguments of one call.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def shell_source(name: str) -> str:
    """The text of ``sh/<name>`` shipped with the package."""
    return files(__name__).joinpath("sh").joinpath(name).read_text(encoding="utf-8")
