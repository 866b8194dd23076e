"""Entry point `sweep`: a grid of configurations, each a child run under one parent run.

    python -m pipeline.sweep --grid "cell=rnn,lstm,gru; bptt=full,truncated; k2=50,100"
    mlflow run . -e sweep --env-manager local -P grid="cell=rnn,gru; bptt=full,truncated"

Every other parameter is the base config that each point of the grid changes.
Truncated-BPTT settings (k1, k2, lanes) mean nothing for full BPTT, so those
points are run once. Children are named by their grid values (`gru-truncated-
k2=100`), log the same metrics as any run, and are not registered: register the
best with `mlflow run . -e register -P run_id=...`. The parent logs the comparison
table (`sweep/comparison.csv`), the plot `plots/sweep.png`, and tags `best_run_id`.
A child that fails (say a numerical fault) is marked FAILED and the sweep goes on.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from pipeline import plots
from pipeline.config import DEFAULTS, Config, add_arguments, build_config, from_args
from pipeline.config import SWEEP_GRID as GRID
from pipeline.main import run
from pipeline.register import MODEL_METRICS
from pipeline.tracking import log_new_params, start_run

TRUNCATED_ONLY = ("k1", "k2", "lanes")
SUMMARY = ("best_val_loss", "best_epoch", "epochs_run", "memory_horizon")


def parse_grid(grid: str) -> dict[str, list[str]]:
    """"a=1,2; b=x,y" -> {"a": ["1", "2"], "b": ["x", "y"]}."""
    axes = {}
    for part in filter(None, (p.strip() for p in grid.split(";"))):
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULTS:
            raise ValueError(f"grid: {part!r} should be NAME=V1,V2,... with NAME a parameter "
                             f"(like cell=rnn,gru)")
        if name in ("resume_run_id", "preset", "experiment"):
            raise ValueError(f"grid: {name} cannot vary within a sweep")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals or name in axes:
            raise ValueError(f"grid: {name} needs values, once (got {part!r})")
        axes[name] = vals
    if not axes:
        raise ValueError(f"grid: no parameters to vary in {grid!r}")
    return axes


def points(base: Config, grid: str) -> list[tuple[str, dict, Config]]:
    """(run name, grid values, config) per distinct point of `grid` over a resolved base
    config, every config checked before any trains."""
    # Without the base's preset (its values are in the base already), a grid value equal
    # to a built-in default (cell=lstm) is applied, not taken for "unset" under the preset.
    base = {k: v for k, v in base.flat().items() if v != DEFAULTS[k] and k != "preset"}
    axes = parse_grid(grid)
    out, seen = [], set()
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        try:
            cfg = build_config({**base, **point, "register": "false"})
        except ValueError as err:
            raise ValueError(f"grid point {_name(point)}: {err}") from None
        if cfg.train.bptt == "full":
            point = {k: v for k, v in point.items() if k not in TRUNCATED_ONLY}
        if tuple(point.items()) not in seen:
            seen.add(tuple(point.items()))
            out.append((_name(point), point, cfg))
    return out


def _name(point: dict) -> str:
    """gru-truncated-k2=100: words as they are, numbers with their parameter's name."""
    return "-".join(f"{k}={v}" if _numeric(v) else v for k, v in point.items())


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def run_sweep(base: Config, grid: str = GRID) -> pd.DataFrame:
    """The parent run and one child per grid point; returns the comparison table."""
    if base.tracking.resume_run_id:
        raise ValueError("resume_run_id: a sweep cannot be resumed as a whole; resume a "
                         "child run by its run_id with the main entry point")
    todo = points(base, grid)
    rows, curves = [], {}
    with start_run(base, run_name=f"sweep {grid}") as parent:
        log_new_params({**base.params(), "grid": grid})
        mlflow.set_tag("sweep_points", str(len(todo)))
        for i, (name, point, cfg) in enumerate(todo, 1):
            print(f"\n[{i}/{len(todo)}] {name}")
            row = {"run_name": name, **point}
            try:
                row["run_id"] = run(copy.deepcopy(cfg), run_name=name, nested=True)["run_id"]
                row["status"] = "FINISHED"
            except Exception as err:  # noqa: BLE001 - one bad point must not end the sweep
                print(f"{name} failed: {err}")
                row.update(status="FAILED", error=str(err).splitlines()[0],
                           run_id=_child_id(parent.info.run_id, name))
            if row["run_id"]:
                row.update(_final_metrics(row["run_id"]))
                curves[name] = _val_curve(row["run_id"])
            rows.append(row)
        table = pd.DataFrame(rows)
        first = ["run_name", *dict.fromkeys(k for _, p, _ in todo for k in p), "status"]
        table = _log_comparison(table[first + [c for c in table if c not in first]], curves)
    print(f"\nsweep {parent.info.run_id}: {len(todo)} runs")
    print(table.drop(columns=["run_id"], errors="ignore").to_string(index=False,
                                                                   float_format="%.6g"))
    return table


def _child_id(parent_id: str, name: str) -> str | None:
    """The run a failed point left (None when it failed before its run started)."""
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
                              f"attributes.run_name = '{name}'", search_all_experiments=True,
                              output_format="list")
    return runs[0].info.run_id if runs else None


def _final_metrics(run_id: str) -> dict:
    """The run's summary and the model's own test metrics (not the baselines')."""
    metrics = MlflowClient().get_run(run_id).data.metrics
    return {k: metrics[k] for k in (*SUMMARY, *MODEL_METRICS) if k in metrics}


def _val_curve(run_id: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, "val_loss"),
                                    key=lambda m: m.step)]


def _log_comparison(table: pd.DataFrame, curves: dict) -> pd.DataFrame:
    if "best_val_loss" not in table:
        raise RuntimeError("every run of the sweep failed:\n" + table.to_string(index=False))
    table = table.sort_values("best_val_loss", na_position="last").reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "comparison.csv"
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path), "sweep")
    plots.log_figure(plots.sweep_comparison(table, curves), "plots/sweep.png")
    best = table.iloc[0]
    mlflow.log_metric("best_val_loss", best["best_val_loss"])
    mlflow.set_tags({"best_run_id": best["run_id"], "best_run_name": best["run_name"]})
    return table


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=GRID, help=f"default: {GRID!r}")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_sweep(from_args(args), args.grid)


if __name__ == "__main__":
    main()
