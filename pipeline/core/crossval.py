"""Cross-validation: one child run per fold under a parent run, for the folds a task
asks for (speech with split=speaker: each speaker held out in turn; prices with
folds=K: a walk-forward backtest).

Each child is an ordinary run (params, curves, its model and test metrics) that is
not registered. The parent logs the base config, every fold's row
(`crossval/folds.csv`), and for each of the model's test metrics its mean and
standard deviation over the folds (`test_accuracy_mean`, `test_accuracy_std`, ...;
the tag `test_metrics` lists them), and `best_val_loss` as the folds' mean. Where
the task pools its folds (prices: every fold's test forecasts together), the parent
also logs the pooled evaluation: `test_*` metrics, tables and plots, as a run does.
"""

from __future__ import annotations

from pipeline.core.params import Config


def run_folds(cfg: Config, folds: list[tuple[str, dict]], run, run_name: str,
              nested: bool = False) -> dict:
    """The parent run and its folds, each run by `run` (pipeline.main.run); returns the
    parent's run_id and the folds' summary."""
    import tempfile
    from pathlib import Path

    import mlflow

    from pipeline import tasks
    from pipeline.core.children import points, run_children
    from pipeline.core.report import log_evaluation, report_text
    from pipeline.core.tracking import log_config, start_run

    if cfg.tracking.resume_run_id:
        raise ValueError("resume_run_id: a cross-validation cannot be resumed as a whole; "
                         "resume a fold's run by its run_id")
    todo = []
    for name, params in folds:
        [(_, point, fold)] = points(cfg, {k: [str(v)] for k, v in params.items()})
        todo.append((name, point, fold))
    with start_run(cfg, run_name=f"{run_name} cv", nested=nested) as parent:
        log_config(cfg)
        mlflow.set_tag("folds", str(len(todo)))
        table, _ = run_children(parent.info.run_id, todo, run)
        summary, names = summarise(table)
        mlflow.log_metrics(summary)
        mlflow.set_tag("test_metrics", ",".join(names))
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "folds.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "folds.csv"), "crossval")
        pooled = tasks.load(cfg.task_name).pool(cfg, table["run_id"].tolist())
        if pooled is not None:  # after the folds' tag: the pooled metrics' names win
            log_evaluation(pooled)
    shown = table.drop(columns=["run_id"], errors="ignore")
    print(f"\ncross-validation {parent.info.run_id} in experiment {cfg.tracking.experiment}: "
          f"{len(todo)} folds\n{shown.to_string(index=False, float_format='%.4g')}\n"
          + "\n".join(f"{k}: {v:.4g}" for k, v in summary.items()))
    if pooled is not None:
        print(f"\nthe folds' test samples pooled:\n{report_text(pooled)}")
    return {"run_id": parent.info.run_id,
            "table": pooled.table if pooled is not None else summary, "history": None}


def summarise(table) -> tuple[dict, list[str]]:
    """Mean and standard deviation over the finished folds of each test metric of the
    model, and the folds' mean best_val_loss; fails when a fold failed."""
    failed = table[table["status"] != "FINISHED"]
    if len(failed):
        raise ValueError("cross-validation: fold(s) failed: " + "; ".join(
            f"{r.run_name}: {r.error}" for r in failed.itertuples()))
    metrics = [c for c in table if c.startswith("test_") and table[c].dtype.kind == "f"]
    out = {}
    for m in metrics:
        out[f"{m}_mean"] = float(table[m].mean())
        out[f"{m}_std"] = float(table[m].std(ddof=0))
    out["best_val_loss"] = float(table["best_val_loss"].mean())
    return out, [k for k in out if k.startswith("test_")]
