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
    assert evaluation.per_series(again, "volatility", QS, 5).model[0] == \
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
    rows = evaluation.per_series(pooled, "volatility", QS, 5)
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


def test_the_year_table_says_in_which_year_the_model_loses_to_garch():
    # two series over two years; the model's variance is below the best (the realised one's
    # mean is 1.2x it): GARCH's is further below in the first year (0.64x) and nearer the
    # best in the second (1.21x); HAR's is further above throughout (1.69x)
    parts = []
    for s, seed in (("A", 0), ("B", 1)):
        f = forecasts(n=730, seed=seed, series=s)
        f.dates = (np.datetime64("2019-01-01") + np.arange(730)).astype("datetime64[D]")
        second = f.dates >= np.datetime64("2020-01-01")
        f.points["garch"] = f.points["model"] * np.where(second, 1.1, 0.8)[:, None]
        parts.append(f)
    years = evaluation.per_year(Forecasts.concat(parts), "volatility")
    assert years["year"].tolist() == [2019, 2020]
    assert years["samples"].tolist() == [730, 730] and years["series"].tolist() == [2, 2]
    assert years["share_beats_garch"].tolist() == [1.0, 0.0]
    assert years["share_beats_har"].tolist() == [1.0, 1.0]
    assert years["share_beats_garch_and_har"].tolist() == [1.0, 0.0]
    in_2019 = Forecasts.concat(parts).subset(np.concatenate([p.dates for p in parts])
                                             < np.datetime64("2020-01-01"))
    assert years.loc[0, "model"] == pytest.approx(
        evaluation.losses(in_2019, "model", "volatility").mean())


def test_a_loss_to_garch_counts_as_significant_only_when_the_dm_test_says_so():
    # GARCH's variance is nearer the best (1.2x the model's) on both series: on A always
    # (1.21x, 2,000 days: a real loss); on B only on average, with noise of its own
    # (200 days: a loss within the noise)
    a, b = forecasts(n=2000, seed=3, series="A"), forecasts(n=200, seed=4, series="B")
    a.points["garch"] = a.points["model"] * 1.1
    wobble = np.random.default_rng(1).normal(0.09, 0.1, (200, 1))
    b.points["garch"] = b.points["model"] * np.exp(wobble)
    series = evaluation.per_series(Forecasts.concat([a, b]), "volatility", QS, 5)
    assert (series.model > series.garch).all() and (series.model < series.har).all()
    assert series.dm_p_garch[0] < 0.05 < series.dm_p_garch[1]
    assert series.dm_p_har.between(0, 1).all()
    shares = evaluation.series_shares(series)
    assert shares["share_beats_garch"] == 0.0 and shares["share_beats_garch_and_har"] == 0.0
    assert shares["share_significantly_behind_garch_or_har"] == 0.5
    assert "share_beats_dm_p_garch" not in shares  # p-values are not methods


def test_the_ratio_plot_draws_a_significant_loss_apart_from_one_within_the_noise():
    from matplotlib.colors import to_rgba

    from pipeline.core import plots

    fig = plots.ratio_by_series(["A", "B", "C", "D"], [0.8, 1.1, 1.3, 0.9], "GARCH(1,1)",
                                [0.01, 0.4, 0.02, 0.5], 0.05)
    ax = fig.axes[0]
    colours = [p.get_facecolor() for p in ax.patches]  # sorted: A, D, B, C
    assert colours == [to_rgba(c) for c in ("C0", "C0", "C1", "C3")]
    assert "ahead on 50%, behind by more than noise on 25%" in ax.get_title()
