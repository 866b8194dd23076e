"""Step `prepare`: load the task's data into sequences and log it, without training.

Reads: the data named by the config (`data`, or `tickers` for prices). Writes: an
MLflow run with the resolved config as params, the dataset as its input, the
split summary and any repairs or bad files; prints the splits.

    python -m pipeline.prepare --data prices.csv
    mlflow run . -e prepare --env-manager local --experiment-name prices -P data=$PWD/prices.csv
"""

from __future__ import annotations

from pipeline import tasks
from pipeline.core import cli


def parse(argv=None):
    """The config this command line would run, checked (every step has `parse`; the
    docs' commands are checked with it)."""
    return cli.parse_config(argv, __doc__)[0]


def main(argv=None) -> None:
    cfg = parse(argv)
    from pipeline.core.tracking import log_config, start_run  # after parsing: fast --help

    task = tasks.load(cfg.task_name)
    data = task.prepare(cfg)
    with start_run(cfg, run_name="prepare") as run:
        log_config(cfg)
        task.log_data(cfg, data)
    print(data.summary())
    print(f"run {run.info.run_id} in experiment {cfg.tracking.experiment}")

if __name__ == "__main__":
    cli.run(main)
