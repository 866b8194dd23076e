"""A walk-forward backtest end to end, the documented command: `mlflow run` with the
volatility preset and folds=5 trains one child run per block of the test calendar,
each on everything before its block with the preset's config, and the parent logs the
folds' test samples pooled (metrics, per-series table, forecast plot with intervals);
no fold is registered."""

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import PRICES, mlflow_run

pytestmark = pytest.mark.slow


def test_folds_run_as_children_and_the_parent_pools_them(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"preset": "volatility-tbptt", "data": str(PRICES), "folds": "5", "epochs": "1",
              "hidden": "4", "checkpoint_dir": str(tmp_path / "ckpt")}
    proc = mlflow_run("main", params, tmp_path, uri, "wf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the folds' test samples pooled" in proc.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("wf").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") ==
                       parent.info.run_id), key=lambda r: r.data.params["fold"])
    assert [r.data.params["fold"] for r in children] == ["1", "2", "3", "4", "5"]
    assert all(r.info.status == "FINISHED" for r in children)
    for run in (parent, *children):  # the preset's config, with what was given on top
        assert {k: run.data.params[k] for k in ("loss", "k2", "hidden", "folds")} == \
            {"loss": "gaussian", "k2": "50", "hidden": "4", "folds": "5"}
    # each block starts where the last one ended, and trains on all that came before
    starts = [r.data.tags["test_start"] for r in children]
    ends = [r.data.tags["test_end"] for r in children]
    assert ends[:-1] == starts[1:] and ends[-1] == "" and starts == sorted(starts)
    # the pooled test samples are every fold's
    pooled, folds = parent.data.metrics, [r.data.metrics for r in children]
    assert {"test_qlike", "test_qlike_garch", "test_qlike_har", "test_coverage_90",
            "test_dm_pvalue_har", "test_qlike_mean", "test_qlike_std"} <= set(pooled)
    assert min(f["test_qlike"] for f in folds) <= pooled["test_qlike"] <= \
        max(f["test_qlike"] for f in folds)
    paths = {a.path for d in ("plots", "evaluation")
             for a in client.list_artifacts(parent.info.run_id, d)}
    assert {"plots/test_forecast.png", "evaluation/per_series.csv",
            "evaluation/test_forecasts.npz"} <= paths
    per_series = pd.read_csv(client.download_artifacts(parent.info.run_id,
                                                       "evaluation/per_series.csv"))
    assert per_series.samples.sum() == sum(
        pd.read_csv(client.download_artifacts(r.info.run_id, "evaluation/per_series.csv"))
        .samples.sum() for r in children)
    assert not client.search_registered_models()
