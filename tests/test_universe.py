"""One volatility model across many series: held-out series (split=ticker), scale-free
inputs and targets, intervals calibrated on validation (split conformal)."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from data_loaders.sequences import VAL
from models.price_model import request_row
from pipeline import tasks
from pipeline.core import tracking
from pipeline.main import main
from tests.conftest import PRICES, SPY

pytestmark = pytest.mark.slow  # every test here trains
SMALL = ["--preset", "volatility-tbptt", "--epochs", "1", "--hidden", "4", "--lanes", "4",
         "--scale_free", "true", "--calibrate", "true", "--select", "qlike"]


def _artifact(client, run_id, path):
    return client.download_artifacts(run_id, path)


def test_held_out_tickers_each_tested_once_by_a_model_that_never_saw_them(store):
    out = main([*SMALL, "--data", str(PRICES), "--split", "ticker", "--folds", "2"])
    client = MlflowClient()
    parent = client.get_run(out["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out['run_id']}'")
    held = [set(r.data.tags["held_out"].split(",")) for r in children]
    assert sorted(map(len, held)) == [2, 2] and held[0] | held[1] == {"AAPL", "GSPC", "MSFT",
                                                                      "SPY"}
    for run, names in zip(children, held, strict=True):
        splits = pd.read_json(_artifact(client, run.info.run_id, "data/splits.json"),
                              orient="split").set_index("series")
        assert (splits.loc[sorted(names), ["train", "val"]] == 0).all().all()
        assert (splits.drop(index=sorted(names))["test"] == 0).all()
        tested = pd.read_csv(_artifact(client, run.info.run_id, "evaluation/per_series.csv"))
        assert set(tested.series) == names
    per_series = pd.read_csv(_artifact(client, out["run_id"], "evaluation/per_series.csv"))
    assert sorted(per_series.series) == ["AAPL", "GSPC", "MSFT", "SPY"]
    m = parent.data.metrics
    assert m["test_share_beats_garch"] == pytest.approx(
        (per_series.model < per_series.garch).mean())
    assert m["test_share_beats_garch_and_har"] == pytest.approx(
        ((per_series.model < per_series.garch) & (per_series.model < per_series.har)).mean())
    behind = ((per_series.model > per_series.garch) & (per_series.dm_p_garch < 0.05)) | (
        (per_series.model > per_series.har) & (per_series.dm_p_har < 0.05))
    assert m["test_share_significantly_behind_garch_or_har"] == pytest.approx(behind.mean())
    years = pd.read_csv(_artifact(client, out["run_id"], "evaluation/per_year.csv"))
    assert years.year.is_monotonic_increasing and years.series.max() == 4
    assert years.samples.sum() == per_series.samples.sum()  # every test day in one year
    assert years.share_beats_garch_and_har.between(0, 1).all()
    cov = per_series["model coverage_90"]
    assert m["test_share_coverage_90_in_band"] == pytest.approx(cov.between(0.85, 0.95).mean())
    assert {"test_coverage_90", "test_coverage_98", "test_dm_pvalue_garch",
            "test_qlike_ewma"} <= set(m)
    plots = {a.path for a in client.list_artifacts(out["run_id"], "plots")}
    assert "plots/qlike_ratio_vs_garch.png" in plots
    assert not client.search_registered_models()  # folds know part of the data only


def test_calibrated_intervals_cover_the_validation_days_as_nominal_when_served(store):
    """The served model's 5 % and 95 % quantiles, rebuilt from prices alone, hold 90 % of
    the validation days' realised volatility: what calibration sets, through serving."""
    out = main([*SMALL, "--data", SPY])
    cfg = tracking.run_config(out["run_id"])
    data = tasks.load("prices").prepare(cfg)
    model = mlflow.pyfunc.load_model(f"runs:/{out['run_id']}/model")
    spec = model.unwrap_python_model().spec
    assert len(spec["calibrated_z"]) == 5 and spec["calibrated_z"] != spec["normal_z"]
    logged = json.loads(open(_artifact(MlflowClient(), out["run_id"],
                                       "calibration.json")).read())
    assert logged["calibrated_z"] == spec["calibrated_z"]
    anchors = data.streams().anchors(VAL, cfg.task.lookback)[0]
    row = request_row(data.frames["SPY"].iloc[: anchors[-1] + 2], "SPY",
                      ["close", "high", "low", "volume"])
    got = model.predict(pd.DataFrame([row]), params={"mode": "rolling"})
    got = got.set_index(got.step - 1).loc[anchors]  # step: the price a forecast is made at
    actual = data.y[0][anchors, 0]
    inside = (got["volatility_h5_q5"] <= actual) & (actual <= got["volatility_h5_q95"])
    assert inside.mean() == pytest.approx(0.90, abs=2 / len(anchors))
    assert not np.allclose(got["volatility_h5_q95"],
                           got["volatility_h5"] + 1.6449 * got["volatility_h5_scale"])


def test_a_registered_model_scored_on_funds_it_never_saw_in_a_run_of_its_own(store, capsys):
    from pipeline import evaluate

    funds = store / "funds"
    funds.mkdir()
    for name in ("SHY", "UNG"):  # short Treasuries (1.5 % a year) and natural gas (42 %)
        (funds / f"{name}.csv").write_bytes((PRICES.parent / "etfs" / f"{name}.csv").read_bytes())
    out = main([*SMALL, "--data", str(PRICES)])
    with pytest.raises(ValueError, match="data and test_start: .* needs both"):
        evaluate.main(["--model", "models:/prices-volatility-h5-gaussian@champion",
                       "--data", str(funds)])
    with pytest.raises(ValueError, match="start: 2014-01-02 is not before test_start 2014-01-02"):
        evaluate.main(["--model", "models:/prices-volatility-h5-gaussian@champion",
                       "--data", str(funds), "--test_start", "2014-01-02", "--start",
                       "2014-01-02"])
    with pytest.raises(ValueError, match="model or run_id: give only one"):
        evaluate.main(["--model", "models:/prices-volatility-h5-gaussian@champion",
                       "--run_id", out["run_id"], "--data", str(funds),
                       "--test_start", "2014-01-02"])
    evaluate.main(["--model", "models:/prices-volatility-h5-gaussian@champion",
                   "--data", str(funds), "--test_start", "2014-01-02"])
    assert "scored on 2 series" in capsys.readouterr().out
    client = MlflowClient()
    [scored] = client.search_runs([client.get_experiment_by_name("prices").experiment_id],
                                  "tags.scored_model = 'models:/prices-volatility-h5-gaussian"
                                  "@champion'")
    assert scored.info.run_id != out["run_id"] and scored.data.params["model_run_id"] == \
        out["run_id"]
    assert scored.data.tags["test_start"] == "2014-01-02"
    per_series = pd.read_csv(_artifact(client, scored.info.run_id, "evaluation/per_series.csv"))
    assert sorted(per_series.series) == ["SHY", "UNG"]
    assert (per_series.samples > 900).all()  # 2014-01-02 .. 2017-11-10, less the horizon
    m = scored.data.metrics
    assert {"test_qlike", "test_qlike_garch", "test_qlike_har", "test_share_beats_garch",
            "test_coverage_90"} <= set(m)
    # the model's own run is untouched: its test metrics are of its own test split
    assert client.get_run(out["run_id"]).data.metrics["test_qlike"] != m["test_qlike"]


def test_yearly_walk_forward_with_intervals_adapted_online(store):
    """folds with val_start/test_start: one child per calendar year, each validated on the
    1,095 days before it (as long as 2011-01-03..2014-01-02); aci adds the model's
    intervals adapted online (model_aci), scored per series and pooled beside the fixed
    ones."""
    out = main([*SMALL, "--data", str(PRICES), "--val_start", "2011-01-03", "--test_start",
                "2014-01-02", "--folds", "3", "--aci", "0.005"])
    client = MlflowClient()
    children = client.search_runs(
        [client.get_run(out["run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{out['run_id']}'", order_by=["params.fold"])
    assert [(r.data.tags["val_start"], r.data.tags["test_start"], r.data.tags["test_end"])
            for r in children] == [("2011-01-03", "2014-01-02", "2015-01-01"),
                                   ("2012-01-02", "2015-01-01", "2016-01-01"),
                                   ("2013-01-01", "2016-01-01", "2017-01-01")]
    m = client.get_run(out["run_id"]).data.metrics
    per_series = pd.read_csv(_artifact(client, out["run_id"], "evaluation/per_series.csv"))
    assert per_series.samples.sum() == sum(
        pd.read_csv(_artifact(client, r.info.run_id, "evaluation/per_series.csv")).samples.sum()
        for r in children)
    cov = per_series["model_aci coverage_90"]
    assert m["test_share_coverage_90_in_band_aci"] == pytest.approx(
        cov.between(0.85, 0.95).mean())
    assert m["test_coverage_90_model_aci"] != m["test_coverage_90"]
    assert 0.8 < m["test_coverage_90_model_aci"] < 0.97


def test_a_model_trained_with_the_market_takes_it_at_every_entry_point(store, capsys):
    """market=FILE: the table's columns are inputs beside each series' own; the served
    model takes them per price, predict and evaluate --data read them from a table."""
    from data_loaders.market import MARKET_FEATURES
    from pipeline import evaluate, predict
    from tests.conftest import bundled_market

    table = store / "market.csv"
    bundled_market().to_csv(table, date_format="%Y-%m-%d")
    out = main([*SMALL, "--data", str(PRICES), "--market", str(table)])
    model = mlflow.pyfunc.load_model("models:/prices-volatility-h5-gaussian-market@champion")
    spec = model.unwrap_python_model().spec
    assert spec["features"][-len(MARKET_FEATURES):] == list(MARKET_FEATURES)
    assert set(MARKET_FEATURES) <= set(model.metadata.get_input_schema().input_names())
    uri = "models:/prices-volatility-h5-gaussian-market@champion"
    with pytest.raises(ValueError, match="market: this model reads the market at each price"):
        predict.main(["--model_uri", uri, "--input", SPY, "--output", str(store / "p.csv")])
    got = predict.main(["--model_uri", uri, "--input", SPY, "--market", str(table),
                        "--output", str(store / "p.csv")])
    assert len(got) == 1 and np.isfinite(got["volatility_h5"]).all()
    funds = store / "funds"
    funds.mkdir()
    (funds / "SHY.csv").write_bytes((PRICES.parent / "etfs" / "SHY.csv").read_bytes())
    for extra in ([], ["--market", str(table)]):  # the table it trained with, or one given
        evaluate.main(["--model", uri, "--data", str(funds), "--test_start", "2014-01-02",
                       *extra])
    client = MlflowClient()
    scored = client.search_runs([client.get_experiment_by_name("prices").experiment_id],
                                f"tags.scored_model = '{uri}'")
    assert len(scored) == 2 and scored[0].data.metrics["test_qlike"] == pytest.approx(
        scored[1].data.metrics["test_qlike"])
    late = store / "late.csv"  # a table that starts after the fund: read it from then on
    bundled_market().loc["2010-01-04":].to_csv(late, date_format="%Y-%m-%d")
    scoring = ["--model", uri, "--data", str(funds), "--test_start", "2014-01-02", "--market",
               str(late)]
    with pytest.raises(ValueError, match=r"SHY: the market table has no row for 2005-02-28 .*"
                                         r"; read the series from the table's first day on: "
                                         r"start=2010-01-04"):
        evaluate.main(scoring)
    evaluate.main([*scoring, "--start", "2010-01-04"])
    [late_run] = client.search_runs([client.get_experiment_by_name("prices").experiment_id],
                                    "params.start = '2010-01-04'")
    assert late_run.data.tags["scored_model"] == uri
    assert np.isfinite(late_run.data.metrics["test_qlike"])
    plain = main([*SMALL, "--data", SPY])  # other inputs: registered under a name of its own
    assert {m.name for m in client.search_registered_models()} >= {
        "prices-volatility-h5-gaussian", "prices-volatility-h5-gaussian-market"}
    with pytest.raises(ValueError, match="trained without a market table"):
        evaluate.main(["--run_id", plain["run_id"], "--data", str(funds), "--test_start",
                       "2014-01-02", "--market", str(table)])
    assert out["run_id"] != plain["run_id"]
