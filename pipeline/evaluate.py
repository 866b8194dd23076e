"""Step `evaluate`: test metrics of a trained model beside its task's baselines.

Reads: a run's `model` and its params (to rebuild the same data and splits).
Writes into that run: `test_{metric}` for the model, `test_{metric}_{baseline}`
for each baseline on the same samples (prices: rmse, mae, dir_acc, r2_oos and
dm_pvalue; speech-classify: accuracy and macro_f1; speech-forecast: l1), the
table as `evaluation/test.json`, the task's plots, and the tag `test_metrics`
(the model's own metric names).

    python -m pipeline.evaluate --run_id RUN_ID
    mlflow run . -e evaluate --env-manager local -P run_id=RUN_ID
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import cli, tasks
from pipeline.config import param


@dataclass
class EvaluateParams:
    run_id: str = param("", "the training run whose model to evaluate", required=True)


def evaluate_and_log(net, cfg, task, data) -> dict:
    """The task's evaluation of `net`, logged into the active run; returns its table."""
    import mlflow
    import pandas as pd

    from pipeline import plots
    from pipeline.metrics import test_metrics

    result = task.evaluate(net, cfg, data)
    table = result.table
    mlflow.log_metrics(test_metrics(table))
    mlflow.set_tag("test_metrics", ",".join(test_metrics({"model": table["model"]})))
    if "best_baseline" in table["model"]:
        mlflow.set_tag("best_baseline", table["model"]["best_baseline"])
    mlflow.log_table(pd.DataFrame(table).T.reset_index(names="method"), "evaluation/test.json")
    for path, figure in result.figures.items():
        plots.log_figure(figure, path)
    return table


def format_table(table: dict) -> str:
    import pandas as pd

    frame = pd.DataFrame(table).T.drop(columns=["best_baseline"], errors="ignore")
    return frame.to_string(float_format=lambda v: f"{v:.6g}", na_rep="")


def main(argv=None) -> None:
    run_id = cli.parse_params(argv, __doc__, EvaluateParams).run_id
    from pipeline.tracking import load_served, logged_model_uri, run_config, start_run

    cfg = run_config(run_id)
    task = tasks.load(cfg.task_name)
    net = load_served(logged_model_uri(run_id), "run_id").net
    data = task.prepare(cfg)
    with start_run(cfg, run_id=run_id):
        table = evaluate_and_log(net, cfg, task, data)
    print(format_table(table))

if __name__ == "__main__":
    cli.run(main)
