"""Step `evaluate`: test metrics of a trained model beside its task's baselines.

Reads: a run's `model` and its params (to rebuild the same data and splits).
Writes into that run: `test_{metric}` for the model, `test_{metric}_{baseline}`
for each baseline on the same samples (prices: rmse, mae, dir_acc, r2_oos,
dm_pvalue and, as they apply, qlike, pinball, coverage and width of intervals,
value-at-risk backtests: pipeline/price_eval.py; speech-classify: accuracy and
macro_f1; speech-forecast: l1), the table as `evaluation/test.json`, the task's
plots and files, and the tag `test_metrics` (the model's own metric names).

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


def evaluate_and_log(net, cfg, task, data):
    """The task's evaluation of `net`, logged into the active run; returns it."""
    from pipeline.report import log_evaluation

    result = task.evaluate(net, cfg, data)
    log_evaluation(result)
    return result


def main(argv=None) -> None:
    run_id = cli.parse_params(argv, __doc__, EvaluateParams).run_id
    from pipeline.report import report_text
    from pipeline.tracking import load_served, logged_model_uri, run_config, start_run

    cfg = run_config(run_id)
    task = tasks.load(cfg.task_name)
    net = load_served(logged_model_uri(run_id), "run_id").net
    data = task.prepare(cfg)
    with start_run(cfg, run_id=run_id):
        result = evaluate_and_log(net, cfg, task, data)
    print(report_text(result))

if __name__ == "__main__":
    cli.run(main)
