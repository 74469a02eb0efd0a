"""``python -m ssh_jobs_provider.cli``: the same as the ``airflow-ssh-jobs`` command."""

from __future__ import annotations

import sys

from ssh_jobs_provider.cli.main import main

sys.exit(main())
