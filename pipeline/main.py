"""Entry point `main`: load data, train, evaluate and register, in one MLflow run.

    python -m pipeline.main --cell gru --bptt truncated --k1 50 --k2 100
    mlflow run . --env-manager local -P cell=gru -P bptt=truncated -P k1=50 -P k2=100
"""

from __future__ import annotations

import argparse

from pipeline.config import Config, add_arguments, from_args
from pipeline.evaluate import evaluate, format_table, log_evaluation
from pipeline.prepare import prepare
from pipeline.register import register_run
from pipeline.tracking import resume_config, start_run
from pipeline.train import train_and_log


def run(cfg: Config, run_name: str | None = None, nested: bool = False) -> dict:
    """One run of either domain: train, evaluate, and register unless register=false
    or the run is nested (a sweep's child). Returns its run_id, test table and history."""
    if cfg.data.domain == "speech":
        from pipeline import speech

        return speech.run(cfg, run_name, nested)
    prep = prepare(cfg)
    print(prep.summary().to_string(index=False))
    with start_run(cfg, run_name or f"{cfg.model.cell}-{cfg.train.bptt}", nested=nested) as active:
        net, history, _ = train_and_log(cfg, prep)
        table, per_series = evaluate(net, cfg, prep)
        log_evaluation(table, per_series)
    run_id = active.info.run_id
    print(f"\nrun {run_id}: best val_loss {history.best_val_loss:.5f} at epoch "
          f"{history.best_epoch} of {len(history.epochs)} ({history.stop_reason})")
    print("test metrics (raw units):")
    print(format_table(table))
    if cfg.tracking.register and not nested:
        register_run(run_id, cfg.model_name())
    return {"run_id": run_id, "table": table, "history": history}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(resume_config(from_args(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
