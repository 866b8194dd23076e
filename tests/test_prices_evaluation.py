"""The price evaluation table (pipeline/tasks/prices/evaluation.py) by hand, walk-forward
blocks, and pooling folds that gives the table of all their samples at once."""

import numpy as np
import pandas as pd
import pytest

from data_loaders.sequences import date_cutoffs, walk_forward_cutoffs
from pipeline.tasks.prices import evaluation, risk
from pipeline.tasks.prices.evaluation import Forecasts

QS = [0.05, 0.5, 0.95]


def forecasts(n=400, seed=0, series="A") -> Forecasts:
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.005, 0.03, n)
    actual = (vol * rng.lognormal(0, 0.3, n))[:, None]
    points = {"model": vol[:, None], "har": (vol * 1.3)[:, None], "ewma": (vol * 0.6)[:, None]}
    band = np.stack([vol * 0.5, vol, vol * 1.6], 1)
    return Forecasts(np.full(n, series), np.arange(n).astype("datetime64[D]"), actual,
                         np.roll(actual, 5, 0), points, {"model": band})


def test_volatility_table_ranks_by_qlike_and_tests_the_model_against_each_baseline():
    f = forecasts()
    table = evaluation.table(f, "volatility", 5, QS)
    assert list(table) == ["model", "har", "ewma"]
    for m in ("model", "har", "ewma"):
        expected = risk.qlike(f.points[m][:, 0] ** 2, f.actual[:, 0] ** 2).mean()
        assert table[m]["qlike"] == pytest.approx(expected)
    best = min(("har", "ewma"), key=lambda m: table[m]["qlike"])
    assert table["model"]["best_baseline"] == best
    assert table["model"]["dm_pvalue"] == table[best]["dm_pvalue"]
    inside = (f.actual[:, 0] >= f.quantiles["model"][:, 0]) & \
             (f.actual[:, 0] <= f.quantiles["model"][:, 2])
    assert table["model"]["coverage_90"] == pytest.approx(inside.mean())
    assert "var5_rate" not in table["model"]  # value-at-risk is for returns


def test_a_normal_forecast_is_scored_by_the_variance_it_implies(tmp_path):
    f = forecasts()
    f.variances["model"] = 1.5 * f.points["model"][:, 0] ** 2  # mean^2 + scale^2, say
    table = evaluation.table(f, "volatility", 5, QS)
    assert table["model"]["qlike"] == pytest.approx(
        risk.qlike(f.variances["model"], f.actual[:, 0] ** 2).mean())
    assert table["model"]["qlike"] != pytest.approx(
        risk.qlike(f.points["model"][:, 0] ** 2, f.actual[:, 0] ** 2).mean())
    assert table["har"]["qlike"] == pytest.approx(  # the point methods: point^2
        risk.qlike(f.points["har"][:, 0] ** 2, f.actual[:, 0] ** 2).mean())
    f.save(tmp_path / "f.npz")
    again = Forecasts.load(tmp_path / "f.npz")
    assert evaluation.table(again, "volatility", 5, QS) == table
    assert evaluation.per_series(again, "volatility", QS).model[0] == \
        pytest.approx(table["model"]["qlike"])


def test_returns_table_backtests_the_lower_quantiles_as_value_at_risk():
    f = forecasts()
    f.quantiles["model"] = f.quantiles["model"] - 0.02  # now a band around zero returns
    table = evaluation.table(f, "returns", 1, QS)
    hits = f.actual[:, 0] < f.quantiles["model"][:, 0]
    assert table["model"]["var5_rate"] == pytest.approx(hits.mean())
    assert table["model"]["var5_kupiec_p"] == pytest.approx(risk.kupiec_pof(hits, 0.05))
    assert "var95_rate" not in table["model"]


def test_pooled_folds_score_like_one_split_and_survive_saving(tmp_path):
    a, b = forecasts(seed=1), forecasts(seed=2, series="B")
    pooled = Forecasts.concat([a, b])
    a.save(tmp_path / "a.npz")
    again = Forecasts.concat([Forecasts.load(tmp_path / "a.npz"), b])
    assert evaluation.table(again, "volatility", 5, QS) == \
           evaluation.table(pooled, "volatility", 5, QS)
    rows = evaluation.per_series(pooled, "volatility", QS)
    assert rows.series.tolist() == ["A", "B"] and rows.samples.tolist() == [400, 400]
    assert rows.model[0] == pytest.approx(evaluation.table(a, "volatility", 5, QS)
                                          ["model"]["qlike"])


def test_walk_forward_blocks_tile_the_test_part_of_the_calendar():
    days = [pd.bdate_range("2000-01-03", periods=1000).to_numpy()]
    blocks = [walk_forward_cutoffs(days, 0.15, 0.3, k, 5) for k in range(1, 6)]
    assert blocks[0][1] == date_cutoffs(days, 0.15, 0.3)[1]  # the first block starts the test
    for (_, _, end), (_, start, _) in zip(blocks, blocks[1:], strict=False):
        assert end == start  # the next block starts where the last one ended
    assert blocks[-1][2] is None  # the last runs to the end
    for val, start, _ in blocks:  # validation: the 15 % of the calendar before each block
        assert ((days[0] >= val) & (days[0] < start)).sum() == 150
    with pytest.raises(ValueError, match="fold 1 of 5: too few days"):
        walk_forward_cutoffs(days, 0.8, 0.3, 1, 5)


@pytest.mark.parametrize("loss, target, horizon", [
    ("gaussian", "volatility", 5), ("quantile", "returns", 2), ("mse", "returns", 3)])
def test_a_served_response_reads_back_into_the_forecasts_it_was_written_from(loss, target,
                                                                               horizon):
    import pandas as pd

    from models.heads import columns
    from models.price_model import output_names
    from pipeline.tasks.prices.evaluation import from_response

    qs = [0.05, 0.5, 0.95] if loss != "mse" else []
    spec = {"loss": loss, "quantiles": qs, "outputs": output_names(target, horizon)}
    rng = np.random.default_rng(0)
    n, out = 7, len(spec["outputs"])
    values = {"point": rng.normal(size=(n, out))}
    if loss == "gaussian":
        values["scale"] = rng.uniform(size=(n, out))
    if loss != "mse":
        values["quantiles"] = np.sort(rng.normal(size=(n, out, len(qs))), axis=-1)
    rows = pd.DataFrame({"series_id": "x", "step": np.arange(n), "date": "",
                         **columns(spec, values)})
    back = from_response(spec, rows)
    assert back.keys() == values.keys()
    for k, v in values.items():
        np.testing.assert_array_equal(back[k], v)


def test_the_printed_table_puts_the_model_s_shares_of_series_on_a_line_under_it():
    from pipeline.core.report import format_table

    text = format_table({"model": {"qlike": 0.5, "share_beats_garch": 0.8,
                                   "share_coverage_90_in_band": 1.0, "best_baseline": "garch"},
                         "garch": {"qlike": 0.6}})
    table, shares = text.rsplit("\n", 1)
    assert "share" not in table and "best_baseline" not in table and "0.6" in table
    assert shares == "share of series: beats_garch 0.8, coverage_90_in_band 1"
