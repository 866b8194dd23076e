"""Step `evaluate`: test metrics of a trained model beside the baselines'.

Reads: a run's `model` and its params (to rebuild the same data and splits).
Writes into that run: test_{rmse,mae,dir_acc,r2_oos} for the model,
test_{metric}_{baseline} for each baseline on the same samples, test_dm_pvalue
(Diebold-Mariano against the best baseline), the table as `evaluation/test.json`
and the plot `plots/test_forecast.png`.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
import pandas as pd
import torch

from data_loaders.sequences import TEST, TRAIN
from models.networks import forecast_at
from pipeline import metrics, plots
from pipeline.config import Config, from_params
from pipeline.prepare import Prepared, prepare
from pipeline.tracking import logged_model_uri, start_run, tracking_uri


def test_forecasts(net: torch.nn.Module, cfg: Config, prep: Prepared) -> list[dict]:
    """Per series: test anchors, actual targets, the model's and every baseline's forecasts."""
    d = cfg.data
    streams = prep.streams()
    anchors = streams.anchors(TEST, d.lookback)
    returns = [x[:, 0] for x in prep.x]
    train_idx = [np.flatnonzero(s == TRAIN) for s in prep.split]
    base = metrics.baseline_forecasts(returns, prep.y, train_idx, d.target, d.horizon)
    out = []
    for i, a in enumerate(anchors):
        if not len(a):
            continue
        pred = forecast_at(net, streams.x[i], a, cfg.train.bptt == "truncated", d.lookback)
        out.append({"name": prep.names[i], "dates": prep.dates[i][a], "actual": prep.y[i][a],
                    "model": prep.y_norm.inverse_transform(pred.numpy()),
                    "baselines": {k: v[i][a] for k, v in base.items()}})
    if not out:
        raise ValueError("the test split has no samples with a full lookback")
    return out


def evaluate(net: torch.nn.Module, cfg: Config, prep: Prepared) -> tuple[dict, list]:
    per_series = test_forecasts(net, cfg, prep)

    def cat(get):
        return np.concatenate([get(s) for s in per_series])

    actual = cat(lambda s: s["actual"])
    base = {k: cat(lambda s, k=k: s["baselines"][k]) for k in per_series[0]["baselines"]}
    ref = base["persistence"] if cfg.data.target == "volatility" else np.zeros_like(actual)
    table = metrics.compare(cat(lambda s: s["model"]), base, actual, ref, cfg.data.horizon)
    return table, per_series


def test_metrics(table: dict) -> dict:
    """{method: {metric: value}} -> {test_metric: ...} for the model and
    {test_metric_method: ...} for each baseline (numbers only)."""
    flat = {}
    for method, row in table.items():
        suffix = "" if method == "model" else f"_{method}"
        flat.update({f"test_{k}{suffix}": v for k, v in row.items()
                     if isinstance(v, int | float)})
    return flat


def log_evaluation(table: dict, per_series: list) -> dict:
    """Metrics, the table and the forecast plot into the active run; returns the metrics."""
    flat = test_metrics(table)
    mlflow.log_metrics(flat)
    mlflow.set_tag("best_baseline", table["model"]["best_baseline"])
    mlflow.log_table(pd.DataFrame(table).T.reset_index(names="method"), "evaluation/test.json")
    s = per_series[0]
    best = table["model"]["best_baseline"]
    fig = plots.forecast_vs_actual(s["dates"], s["actual"][:, 0], s["model"][:, 0],
                                   s["baselines"][best][:, 0], best,
                                   f"{s['name']}: test forecast vs actual (first output)")
    plots.log_figure(fig, "plots/test_forecast.png")
    return flat


def format_table(table: dict) -> str:
    frame = pd.DataFrame(table).T.drop(columns=["best_baseline"], errors="ignore")
    return frame.to_string(float_format=lambda v: f"{v:.6g}", na_rep="")


def load_run(run_id: str) -> tuple[torch.nn.Module, Config]:
    """The network of a run's logged model and the config it was trained with."""
    model = mlflow.pyfunc.load_model(logged_model_uri(run_id)).unwrap_python_model()
    return model.net, from_params(mlflow.get_run(run_id).data.params)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_id", required=True, help="run whose model to evaluate")
    args = parser.parse_args(argv)
    mlflow.set_tracking_uri(tracking_uri())
    net, cfg = load_run(args.run_id)
    table, per_series = evaluate(net, cfg, prepare(cfg))
    with start_run(cfg, run_id=args.run_id):
        log_evaluation(table, per_series)
    print(format_table(table))


if __name__ == "__main__":
    main()
