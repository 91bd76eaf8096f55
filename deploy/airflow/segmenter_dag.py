"""Airflow DAG: segmenter once per logical date (Airflow's `ds` is segmenter's --date).

Retries cover storage and engine failures (exit 4); exit 5 (another live run holds the
date's lock) marks the task skipped; exits 2, 3 and 6 fail it (bad pipeline file, rejected
input data, a time limit set to "fail") and should page someone. Backfills: clear the DAG runs,
or run `segmenter run --from D1 --to D2`, which skips published dates.
"""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="segmenter_nightly",
    schedule="30 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
) as dag:
    BashOperator(
        task_id="segment_customers",
        bash_command=(
            "segmenter run --pipeline /opt/segmenter/pipelines/nightly.toml --date {{ ds }} "
            "--metrics-file /opt/segmenter/metrics/segmenter.prom"
        ),
        env={"SEGMENTER_LOG_FORMAT": "json"},
        append_env=True,
        skip_on_exit_code=5,
        execution_timeout=timedelta(hours=4),
    )
