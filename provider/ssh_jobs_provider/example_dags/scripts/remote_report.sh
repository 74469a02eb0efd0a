#!/bin/bash
# Rendered by Airflow (Jinja) before it is sent: {{ dag.dag_id }} / {{ task.task_id }}.
set -euo pipefail
echo "title: ${REPORT_TITLE}"
echo "greeting: ${GREETING}"
echo "run: {{ run_id }}"
for step in extract transform load; do
  echo "step ${step} ok"
done
