"""Entry point `sweep`: a grid of configurations, each a child run under one parent run.

    python -m pipeline.sweep --grid "cell=rnn,lstm,gru; bptt=full,truncated; k2=50,100"
    mlflow run . -e sweep --env-manager local --experiment-name prices -P grid="cell=rnn,gru"

Every other parameter (and a preset) is the base config that each point of the
grid changes, for any task. Truncated-BPTT settings (k1, k2, lanes) mean nothing
for full BPTT, so those points are run once. Children are named by their grid
values (`gru-truncated-k2=100`), log the same params and metrics as any run, and
are not registered: register the best with `-e register -P run_id=...`. The parent
logs the base config and the grid as params, the comparison table
(`sweep/comparison.csv`), the plot `plots/sweep.png`, and tags `best_run_id`. A
child that fails (say a numerical fault) is marked FAILED and the sweep goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.core import cli
from pipeline.core.children import points, run_children
from pipeline.core.params import Config, param


@dataclass
class SweepParams:
    grid: str = param("cell=rnn,lstm,gru; bptt=full,truncated",
                      "NAME=V1,V2,... per parameter, separated by ;")


def run_sweep(base: Config, grid: str):
    """The parent run and one child per grid point; returns the comparison table."""
    import mlflow

    from pipeline.core.tracking import log_config, start_run
    from pipeline.main import run

    if base.tracking.resume_run_id:
        raise ValueError("resume_run_id: a sweep cannot be resumed as a whole; resume a "
                         "child run by its run_id with the main entry point")
    todo = points(base, grid)
    with start_run(base, run_name=f"sweep {grid}") as parent:
        log_config(base, {"grid": grid})
        mlflow.set_tag("sweep_points", str(len(todo)))
        table, curves = run_children(parent.info.run_id, todo, run)
        table = _log_comparison(table, curves)
    print(f"\nsweep {parent.info.run_id} in experiment {base.tracking.experiment}: "
          f"{len(todo)} runs")
    print(table.drop(columns=["run_id"], errors="ignore").to_string(index=False,
                                                                   float_format="%.6g"))
    return table


def _log_comparison(table, curves: dict):
    import tempfile
    from pathlib import Path

    import mlflow

    from pipeline.core import plots

    if "best_val_loss" not in table:
        raise ValueError("every run of the sweep failed: " + "; ".join(
            f"{r.run_name}: {r.error}" for r in table.itertuples()))
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


def parse(argv=None) -> tuple[Config, str]:
    """The base config and the grid this command line would run, checked (every step has
    `parse`; the docs' commands are checked with it)."""
    base, extra = cli.parse_config(argv, __doc__, {"sweep": SweepParams})
    grid = extra.get("grid", SweepParams.grid)
    points(base, grid)
    return base, grid


def main(argv=None):
    base, grid = parse(argv)
    if "LOCAL_RANK" in os.environ:  # torchrun's: every rank would run the whole sweep
        raise ValueError("sweep: its points train one after another in one process; start "
                         "it without torchrun")
    return run_sweep(base, grid)


if __name__ == "__main__":
    cli.run(main)
