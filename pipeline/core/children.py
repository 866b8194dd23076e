"""Child runs under one parent run: the points of a grid (a sweep) or the folds of a
cross-validation, each an ordinary run of the main entry point, and what their
parent collects of them (final metrics, validation curves). A child that fails
(say a numerical fault) is marked FAILED and the others go on.
"""

from __future__ import annotations

import copy
import itertools

from pipeline.core import cli
from pipeline.core.config import build_config, unknown_message
from pipeline.core.params import Config

TRUNCATED_ONLY = ("k1", "k2", "lanes")
FIXED = ("task", "resume_run_id", "preset", "experiment", "registered_model", "register")
SUMMARY = ("best_val_loss", "best_epoch", "epochs_run", "memory_horizon")


def parse_grid(grid: str, base: Config) -> dict[str, list[str]]:
    """"a=1,2; b=x,y" -> {"a": ["1", "2"], "b": ["x", "y"]}, every name a parameter of
    the base config's task."""
    axes = {}
    for part in filter(None, (p.strip() for p in grid.split(";"))):
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"grid: {part!r} should be NAME=V1,V2,... (like cell=rnn,gru)")
        if name not in base.flat():
            raise ValueError(f"grid: {unknown_message(name, base.task_name, list(base.flat()))}")
        if name in FIXED:
            raise ValueError(f"grid: {name} cannot vary within a sweep")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if name in axes:
            raise ValueError(f"grid: {name} is given twice; list its values once "
                             f"({name}=V1,V2,...)")
        if not vals:
            raise ValueError(f"grid: {name} needs values (got {part!r})")
        axes[name] = vals
    if not axes:
        raise ValueError(f"grid: no parameters to vary in {grid!r}")
    return axes


def points(base: Config, grid: str | dict[str, list[str]]) -> list[tuple[str, dict, Config]]:
    """(run name, values, config) per distinct point of `grid` (text, or parsed) over a
    resolved base config, every config checked before any trains."""
    fixed = {k: v for k, v in base.flat().items() if k != "preset"}  # resolved already
    axes = parse_grid(grid, base) if isinstance(grid, str) else grid
    out, seen = [], set()
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        try:
            cfg = build_config({**fixed, **point, "register": "false"}, base.base)
        except ValueError as err:
            raise ValueError(f"grid point {_name(point)}: {err}") from None
        cfg.tracking.preset = base.tracking.preset  # its values are in `fixed` already
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


def run_children(parent_id: str, todo: list[tuple[str, dict, Config]], run):
    """Each point as a child run of the active run, by `run` (pipeline.main.run: passed
    in, since main runs cross-validations through here); returns the table of their
    values, status and metrics, and their validation curves."""
    import pandas as pd

    rows, curves = [], {}
    for i, (name, point, cfg) in enumerate(todo, 1):
        print(f"\n[{i}/{len(todo)}] {name}", flush=True)
        row = {"run_name": name, **point}
        try:
            row["run_id"] = run(copy.deepcopy(cfg), run_name=name, nested=True)["run_id"]
            row["status"] = "FINISHED"
        except Exception as err:  # noqa: BLE001 - one bad point must not end the others
            print(f"{name} failed: {cli.one_line(err)}")
            row.update(status="FAILED", error=cli.one_line(err),
                       run_id=_child_id(parent_id, name))
        if row["run_id"]:
            row.update(_final_metrics(row["run_id"]))
            curves[name] = _val_curve(row["run_id"])
        rows.append(row)
    table = pd.DataFrame(rows)
    first = ["run_name", *dict.fromkeys(k for _, p, _ in todo for k in p), "status"]
    return table[first + [c for c in table if c not in first]], curves


def _child_id(parent_id: str, name: str) -> str | None:
    """The run a failed point left (None when it failed before its run started)."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
                              f"attributes.run_name = '{name}'", search_all_experiments=True,
                              output_format="list")
    return runs[0].info.run_id if runs else None


def _final_metrics(run_id: str) -> dict:
    """The run's summary and the model's own test metrics (not the baselines')."""
    from mlflow import MlflowClient

    run = MlflowClient().get_run(run_id)
    own = run.data.tags.get("test_metrics", "").split(",")
    return {k: run.data.metrics[k] for k in (*SUMMARY, *own) if k in run.data.metrics}


def _val_curve(run_id: str) -> list[float]:
    from mlflow import MlflowClient

    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, "val_loss"),
                                    key=lambda m: m.step)]
