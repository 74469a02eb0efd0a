"""
The ``airflow-ssh-jobs`` command, for the platform team of a host: ``doctor`` (is the host
ready, and how to size it), ``status`` (the job directories and their states) and ``reap``
(remove old directories of finished jobs). One module per command; the decisions are pure
functions (:mod:`ssh_jobs_provider.protocol.ops`, :mod:`.advice`), the modules here do the I/O.
"""
