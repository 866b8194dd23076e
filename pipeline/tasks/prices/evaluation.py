"""Test evaluation of price forecasts: the model beside its baselines on the same samples.

From per-sample forecasts (`Forecasts`, all series one after another) to the table
a run logs, so a single split and a walk-forward backtest's folds pooled are scored by
the same code:
- every method with a point forecast: RMSE, MAE, directional accuracy, out-of-sample
  R^2 and, for volatility, QLIKE (risk.py) of the variance the method forecasts
  (`Forecasts.variance`); `dm_pvalue` on a baseline's row is
  the Diebold-Mariano p-value of the model against it (by QLIKE for volatility, squared
  error for returns); on the model's row, against the best baseline by that loss;
- every method with quantiles (the model under loss=gaussian or quantile, GARCH(1,1),
  historical simulation): the pinball loss, the coverage and width of each central
  interval (`coverage_90`, `width_90`) and, for returns, each lower quantile backtested
  as value-at-risk (`var5_rate`, `var5_kupiec_p`, `var5_christoffersen_p`).
- with aci > 0, the model's intervals adapted online per series (`model_aci`,
  pipeline/tasks/prices/risk.py `adaptive_intervals`), scored as another method with quantiles.
Quantile metrics are on the first output (the next day's return, or the volatility).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.metrics import forecast_metrics
from pipeline.tasks.prices import risk

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Forecasts:
    series: np.ndarray  # [N] the series of each sample
    dates: np.ndarray  # [N] datetime64: the day each forecast is made
    actual: np.ndarray  # [N, out]
    ref: np.ndarray  # [N, out]: no move (zero return, or the last realised volatility)
    points: dict[str, np.ndarray]  # method ("model" first) -> [N, out]
    quantiles: dict[str, np.ndarray]  # method -> [N, Q], of the first output
    # method -> [N]: the variance (squared volatility) it forecasts where that is not the
    # square of its point forecast (a distribution's mean of RV^2; see `variance`)
    variances: dict[str, np.ndarray] = field(default_factory=dict)

    def variance(self, method: str) -> np.ndarray:
        """[N] the forecast of the realised variance (volatility target), what QLIKE
        scores: the square of the point forecast, unless the method forecasts a normal
        distribution of the volatility, whose mean of RV^2 is mean^2 + scale^2 (the
        forecast QLIKE rewards: it is minimised in expectation by E[RV^2], Patton 2011)."""
        return self.variances.get(method, self.points[method][:, 0] ** 2)

    def save(self, path) -> None:
        np.savez_compressed(path, series=self.series.astype(str),
                            dates=self.dates.astype("datetime64[D]"), actual=self.actual,
                            ref=self.ref, **{f"point:{k}": v for k, v in self.points.items()},
                            **{f"quantiles:{k}": v for k, v in self.quantiles.items()},
                            **{f"variance:{k}": v for k, v in self.variances.items()})

    @classmethod
    def load(cls, path) -> Forecasts:
        with np.load(path, allow_pickle=False) as f:
            def part(kind):
                return {k.split(":", 1)[1]: f[k] for k in f.files if k.startswith(kind)}
            return cls(f["series"], f["dates"], f["actual"], f["ref"], part("point:"),
                       part("quantiles:"), part("variance:"))

    @classmethod
    def concat(cls, parts: list[Forecasts]) -> Forecasts:
        def cat(get):
            return np.concatenate([get(p) for p in parts])
        return cls(cat(lambda p: p.series), cat(lambda p: p.dates), cat(lambda p: p.actual),
                   cat(lambda p: p.ref),
                   {k: cat(lambda p, k=k: p.points[k]) for k in parts[0].points},
                   {k: cat(lambda p, k=k: p.quantiles[k]) for k in parts[0].quantiles},
                   {k: cat(lambda p, k=k: p.variances[k]) for k in parts[0].variances})

    def subset(self, keep: np.ndarray) -> Forecasts:
        return Forecasts(self.series[keep], self.dates[keep], self.actual[keep],
                         self.ref[keep], {k: v[keep] for k, v in self.points.items()},
                         {k: v[keep] for k, v in self.quantiles.items()},
                         {k: v[keep] for k, v in self.variances.items()})


def from_response(spec: dict, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """A served price model's response rows back to forecasts: `point` [N, out] and, as
    the model has them, `scale` [N, out] and `quantiles` [N, out, Q]. The response holds
    `series_id`, `step`, `date`, then per output its point, scale and quantiles
    (models/heads.py `columns`). Read by position: this side needs no code of the model's,
    whose own copy of models/ is first on the path once it is loaded."""
    loss, n_q = spec.get("loss", "mse"), len(spec.get("quantiles", []))
    width = 1 + (loss == "gaussian") + (n_q if loss != "mse" else 0)
    values = rows.iloc[:, 3:].to_numpy(np.float64).reshape(len(rows), len(spec["outputs"]),
                                                           width)
    out = {"point": values[..., 0]}
    if loss == "gaussian":
        out["scale"] = values[..., 1]
    if loss != "mse":
        out["quantiles"] = values[..., width - n_q:]
    return out


def losses(f: Forecasts, method: str, target: str) -> np.ndarray:
    """Per-sample loss the methods are ranked and tested by: QLIKE of the forecast
    variance for volatility (robust to the noise in realised volatility, Patton 2011),
    the squared error averaged over the horizons for returns."""
    if target == "volatility":
        return risk.qlike(f.variance(method), f.actual[:, 0] ** 2)
    return ((f.points[method] - f.actual) ** 2).mean(axis=1)


def table(f: Forecasts, target: str, horizon: int, quantiles: list[float]) -> dict:
    """{method: {metric: value}}, the model first (see the module's docstring)."""
    rows = {m: forecast_metrics(p, f.actual, f.ref) for m, p in f.points.items()}
    loss = {m: losses(f, m, target) for m in f.points}
    if target == "volatility":
        for m in rows:
            rows[m]["qlike"] = float(loss[m].mean())
    key = "qlike" if target == "volatility" else "rmse"
    baselines = [m for m in rows if m != "model"]
    for m in baselines:
        rows[m]["dm_pvalue"] = risk.diebold_mariano_loss(loss["model"], loss[m], horizon)
    best = min(baselines, key=lambda m: rows[m][key])
    rows["model"].update(dm_pvalue=rows[best]["dm_pvalue"], best_baseline=best)
    for m, q in f.quantiles.items():
        rows.setdefault(m, {}).update(
            quantile_metrics(q, f.actual[:, 0], quantiles, var=target == "returns"))
    return rows


def quantile_metrics(q: np.ndarray, actual: np.ndarray, quantiles: list[float],
                     var: bool) -> dict:
    """Pinball loss and central intervals of quantile forecasts [N, Q]; with `var`, each
    quantile below 0.5 backtested as value-at-risk. Samples without a forecast (NaN: too
    little history for historical simulation) are left out."""
    ok = np.isfinite(q).all(axis=1)
    q, actual = q[ok], actual[ok]
    out = {"pinball": risk.pinball_loss(q, actual, quantiles),
           **risk.interval_scores(q, actual, quantiles)}
    for k, tau in enumerate(quantiles):
        if var and tau < 0.5:
            hits = actual < q[:, k]
            name = f"var{round(100 * tau, 6):g}"
            out.update({f"{name}_rate": float(hits.mean()),
                        f"{name}_kupiec_p": risk.kupiec_pof(hits, tau),
                        f"{name}_christoffersen_p": risk.christoffersen_independence(hits)})
    return out


def per_series(f: Forecasts, target: str, quantiles: list[float], horizon: int
               ) -> pd.DataFrame:
    """One row per series: the test samples, each point method's mean loss (QLIKE for
    volatility, MSE for returns), the Diebold-Mariano p-value of the model against GARCH
    and HAR on that series alone (`dm_p_garch`, `dm_p_har`: whether a loss to one of
    them is more than noise), and the model's interval coverages."""
    import pandas as pd

    rows = []
    for name in dict.fromkeys(f.series.tolist()):
        part = f.subset(f.series == name)
        loss = {m: losses(part, m, target) for m in part.points}
        row = {"series": name, "samples": len(part.series)}
        row.update({m: float(v.mean()) for m, v in loss.items()})
        row.update({f"dm_p_{m}": risk.diebold_mariano_loss(loss["model"], loss[m], horizon)
                    for m in SIGNIFICANCE_AGAINST if m in loss})
        for m in (m for m in part.quantiles if m.startswith("model")):  # model, model_aci
            scores = risk.interval_scores(part.quantiles[m], part.actual[:, 0], quantiles)
            row.update({f"{m} {k}": v for k, v in scores.items() if k.startswith("coverage")})
        rows.append(row)
    return pd.DataFrame(rows)


SIGNIFICANCE_AGAINST = ("garch", "har")  # the baselines each series is tested against
SIGNIFICANT = 0.05  # a Diebold-Mariano p-value below this: more than noise


def per_year(f: Forecasts, target: str) -> pd.DataFrame:
    """One row per calendar year of the forecast dates: its samples and series, each point
    method's mean loss over them, and the `share_beats_*` of `series_shares` within the
    year (which year a model loses in: a crash it under-reacts to shows here, not in the
    pooled figure). Each sample's losses are computed once, then grouped."""
    import pandas as pd

    loss = pd.DataFrame({m: losses(f, m, target) for m in f.points})
    years = f.dates.astype("datetime64[Y]").astype(int) + 1970
    rows = []
    for year, part in loss.groupby(years):
        series = part.groupby(f.series[years == year], sort=False)
        table = pd.concat([series.size().rename("samples"), series.mean()], axis=1)
        shares = series_shares(table.reset_index(names="series"))
        rows.append({"year": int(year), "samples": len(part), "series": len(table),
                     **part.mean().to_dict(),
                     **{k: v for k, v in shares.items() if k.startswith("share_beats")}})
    return pd.DataFrame(rows)


COVERAGE_BAND = (0.85, 0.95)  # a series' 90 % interval is called calibrated inside this


def series_shares(series: pd.DataFrame) -> dict:
    """Over the series of a per-series table: the share on which the model's loss is below
    each baseline's (`share_beats_garch`), below both GARCH's and HAR's, the share on
    which it is above GARCH's or HAR's by a Diebold-Mariano test (p < SIGNIFICANT:
    `share_significantly_behind_garch_or_har`) and, with intervals, the share whose 90 %
    interval covers COVERAGE_BAND of its days."""
    methods = [m for m in series.columns[2:] if not m.startswith(("model", "dm_p_"))]
    out = {f"share_beats_{m}": float((series["model"] < series[m]).mean()) for m in methods}
    if {"garch", "har"} <= set(methods):
        out["share_beats_garch_and_har"] = float(
            ((series["model"] < series["garch"]) & (series["model"] < series["har"])).mean())
    if all(f"dm_p_{m}" in series for m in SIGNIFICANCE_AGAINST):
        behind = np.zeros(len(series), bool)
        for m in SIGNIFICANCE_AGAINST:
            behind |= (series["model"] > series[m]) & (series[f"dm_p_{m}"] < SIGNIFICANT)
        out["share_significantly_behind_garch_or_har"] = float(behind.mean())
    low, high = COVERAGE_BAND
    for m, name in (("model", ""), ("model_aci", "_aci")):
        if f"{m} coverage_90" in series:
            cov = series[f"{m} coverage_90"]
            out[f"share_coverage_90_in_band{name}"] = float(((cov >= low) & (cov <= high)).mean())
    return out
