"""Step `evaluate`: test metrics of a trained model beside its task's baselines.

Reads: a run's `model` and its params (to rebuild the same data and splits).
Writes into that run: `test_{metric}` for the model, `test_{metric}_{baseline}`
for each baseline on the same samples (prices: rmse, mae, dir_acc, r2_oos,
dm_pvalue and, as they apply, qlike, pinball, coverage and width of intervals,
value-at-risk backtests: pipeline/tasks/prices/evaluation.py; speech-classify: accuracy,
macro_f1, accuracy_with_unknown, unknown_share, ece, false_accept (generated non-speech
called a digit) and with synthetic voices word_false_accept (held-out words called a
digit); speech-forecast: l1), the table as `evaluation/test.json`, the task's
plots and files, and the tag `test_metrics` (the model's own metric names).

    python -m pipeline.evaluate --run_id RUN_ID
    mlflow run . -e evaluate --env-manager local -P run_id=RUN_ID

With `data` (price models): the model (`run_id`'s, or `model`, a model URI such as
models:/NAME@champion) scored on other data from `test_start` on, through the served
model from each series' prices, beside the same baselines fit on the days before
`test_start` (GARCH per series; HAR one fit over all the series given); logged as a
run of its own, in the model's experiment, tagged with the model, its run and the data:

    python -m pipeline.evaluate --model models:/prices-volatility-h5-gaussian@champion \\
        --data data/etfs --test_start 2014-01-02
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import tasks
from pipeline.core import cli
from pipeline.core.params import param


@dataclass
class EvaluateParams:
    run_id: str = param("", "the training run whose model to evaluate (or model)")
    model: str = param("", "with data, instead of run_id: a model URI "
                           "(models:/NAME@champion, runs:/RUN_ID/model)")
    data: str = param("", "price data to score the model on (CSV file, folder, Parquet), "
                          "logged as a run of its own; empty: the run's own test split")
    test_start: str = param("", "with data: the first day scored (YYYY-MM-DD); the days "
                                "before it fit the baselines")
    start: str = param("", "with data: the first day read (YYYY-MM-DD; the baselines fit "
                           "from it); empty: each series' first")
    end: str = param("", "with data: the last day scored; empty: to the end")
    skip_bad: bool = param(False, "with data: leave bad or too short series out (listed in "
                                  "the run)")
    repair: str = param("none", "with data: bad CSV rows: none (stop with the file, line and "
                                "column), drop, or ffill", ("none", "drop", "ffill"))
    market: str = param("", "with data, a model trained with a market table: the table "
                            "covering the data's days; empty: the one it trained with")


def evaluate_and_log(net, cfg, task, data):
    """The task's evaluation of `net`, logged into the active run; returns it."""
    from pipeline.core.report import log_evaluation

    result = task.evaluate(net, cfg, data)
    log_evaluation(result)
    return result


def parse(argv=None) -> EvaluateParams:
    """The parameters this command line would run with, checked (every step has `parse`;
    the docs' commands are checked with it)."""
    return cli.parse_params(argv, __doc__, EvaluateParams)


def main(argv=None) -> None:
    p = parse(argv)
    if p.data or p.model:
        return score_other_data(p)
    if not p.run_id:
        raise ValueError("run_id: give the training run whose model to evaluate (or data "
                         "and model, to score a model on other data)")
    run_id = p.run_id
    from pipeline.core.report import report_text
    from pipeline.core.tracking import load_served, logged_model_uri, run_config, start_run

    cfg = run_config(run_id)
    task = tasks.load(cfg.task_name)
    net = load_served(logged_model_uri(run_id), "run_id").net
    data = task.prepare(cfg)
    with start_run(cfg, run_id=run_id):
        result = evaluate_and_log(net, cfg, task, data)
    print(report_text(result))

def score_other_data(p: EvaluateParams) -> None:
    """`data`: the model scored on other data from `test_start` on, in a run of its own."""
    from datetime import date
    from pathlib import Path

    import mlflow

    from pipeline.core.config import build_config
    from pipeline.core.report import log_evaluation, report_text
    from pipeline.core.tracking import load_served, logged_model_uri, run_config, start_run

    if not (p.data and p.test_start):
        raise ValueError("data and test_start: scoring a model on other data needs both "
                         f"(got data={p.data!r}, test_start={p.test_start!r})")
    for name in ["test_start"] + (["start"] if p.start else []):
        try:
            date.fromisoformat(getattr(p, name))
        except ValueError:
            raise ValueError(f"{name}: cannot read {getattr(p, name)!r} as a date "
                             "(YYYY-MM-DD)") from None
    if p.start and date.fromisoformat(p.start) >= date.fromisoformat(p.test_start):
        raise ValueError(f"start: {p.start} is not before test_start {p.test_start}: the "
                         "days between them fit the baselines")
    if bool(p.model) == bool(p.run_id):
        raise ValueError("model or run_id: give only one (the model to score)")
    uri = p.model or logged_model_uri(p.run_id)
    served = load_served(uri, "model" if p.model else "run_id")
    run_id = p.run_id or mlflow.models.get_model_info(uri).run_id
    trained = run_config(run_id, "model")
    if trained.task_name != "prices":
        raise ValueError(f"data: scoring on other data is for price models; {uri} is a "
                         f"{trained.task_name} model")
    if p.market and not trained.task.market:
        raise ValueError(f"market: {uri} was trained without a market table; leave market out")
    data_path = Path(p.data).expanduser().resolve()
    fixed = {k: v for k, v in trained.flat().items() if k != "preset"}  # resolved already
    cfg = build_config({**fixed, "data": str(data_path), "tickers": "", "start": p.start,
                        "end": p.end, "val_start": "", "test_start": "", "split": "calendar",
                        "folds": 1, "fold": 0, "skip_bad": p.skip_bad, "repair": p.repair,
                        "register": False,
                        **({"market": str(Path(p.market).expanduser().resolve())}
                           if p.market else {})})
    task = tasks.load("prices")
    data = task.prepare(cfg, scored_from=p.test_start)
    result = task.scored(task.served_forecasts(served, cfg, data), cfg)
    with start_run(cfg, run_name=f"score {Path(p.data).name} from {p.test_start}"):
        logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params  # by mlflow run
        mlflow.log_params({k: v for k, v in {"model": uri, "model_run_id": run_id,
                                             "data": str(data_path), "start": p.start,
                                             "test_start": p.test_start,
                                             "end": p.end}.items() if k not in logged})
        mlflow.set_tags({"scored_model": uri, "scored_data": str(data_path)})
        task.log_data(cfg, data)
        log_evaluation(result)
        print(f"run {mlflow.active_run().info.run_id}: {uri} scored on {len(data.names)} "
              f"series of {data_path} from {p.test_start}"
              + (f"; {len(data.bad)} bad series left out (data/bad_series.txt): "
                 + ", ".join(Path(n).name for n, _ in data.bad) if data.bad else ""))
    print(report_text(result))


if __name__ == "__main__":
    cli.run(main)
