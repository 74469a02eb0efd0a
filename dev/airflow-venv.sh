#!/usr/bin/env bash
# Create, or reuse, a virtualenv with one given Airflow release and this project's test
# dependencies: `.venv-airflow-<version>` (e.g. `bash dev/airflow-venv.sh 3.1.8`).
# It is reused as long as its key (the Airflow version, the Python version and pyproject's
# dependency lists) is unchanged, and rebuilt from scratch otherwise.
# Airflow's constraints files are not used (they live outside the package index): the
# newest releases that Airflow's own metadata allows are installed, with the pins below
# where a newer library broke that Airflow release.
# Prints the virtualenv's path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:?usage: bash dev/airflow-venv.sh <airflow version, e.g. 3.1.8>}"
case "$version" in
  [0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "Airflow version must look like 3.1.8, not '$version'" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
venv=".venv-airflow-$version"

# Libraries released after an Airflow release that break it.
pins=()
case "$version" in
  2.* | 3.[01].*)
    # cryptography 51 made MultiFernet a compiled class whose attributes cannot be set;
    # Airflow before 3.2 sets one on it as soon as a Fernet key is configured (every real
    # deployment: `airflow db migrate` writes one), and then fails to read any connection.
    pins+=("cryptography<51")
    ;;
esac

# The `dependencies` and `test` lists of pyproject.toml, one quoted requirement a line.
dependency_lists() {
  awk '/^(dependencies|test) = \[/{keep=1; next} keep && /^\]/{keep=0} keep{print}' pyproject.toml
}

python_version=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
# The key changes with whatever decides what gets installed.
key=$(
  {
    echo "airflow $version"
    echo "python $python_version"
    echo "pins ${pins[*]:-}"
    dependency_lists
  } | sha256sum | cut -d' ' -f1
)

if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.cache-key" 2>/dev/null)" = "$key" ]; then
  echo "== $venv is up to date (key ${key:0:12})" >&2
else
  echo "== creating $venv (Airflow $version, Python $python_version)" >&2
  start=$(date +%s)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # The project's own requirements except Airflow, so that a release below the declared
  # minimum can still be tried; the project itself goes in without dependencies.
  mapfile -t requirements < <(
    dependency_lists | sed -n 's/^ *"\([^"]*\)",\{0,1\}$/\1/p' | grep -v '^apache-airflow\([^a-z-]\|$\)'
  )
  "$venv/bin/python" -m pip install -q "apache-airflow==$version" "${requirements[@]}" "${pins[@]}"
  "$venv/bin/python" -m pip install -q --no-deps -e .
  # What was resolved, to compare two machines' runs of the same release.
  "$venv/bin/python" -m pip freeze --exclude-editable >"$venv/pip-freeze.txt"
  echo "$key" >"$venv/.cache-key"
  echo "== $venv created in $(( $(date +%s) - start ))s" >&2
fi
echo "$venv"
