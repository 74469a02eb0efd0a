"""Real parts for the demo and the tests: an sshd on loopback and a throwaway Airflow deployment.

Import as ``harness`` with ``dev/`` on ``sys.path`` (pytest adds it; ``dev/demo.py`` runs from there).
"""
