"""Step `register`: add a run's model to the Model Registry.

Reads: the run's `model`, its best_val_loss and test metrics. Writes: a new
version of the registered model (tagged with those metrics); the alias
`champion` moves to it only when its validation loss beats the champion's.
"""

from __future__ import annotations

import argparse

import mlflow

from pipeline.config import from_params
from pipeline.tracking import logged_model_uri, register, tracking_uri

MODEL_METRICS = [f"test_{k}" for k in ("rmse", "mae", "dir_acc", "r2_oos", "dm_pvalue",
                                       "accuracy", "macro_f1", "l1")]


def register_run(run_id: str, name: str) -> tuple[str, bool]:
    run = mlflow.get_run(run_id)
    m = run.data.metrics
    if "best_val_loss" not in m:
        raise ValueError(f"run_id: run {run_id} has no best_val_loss; was it a training run?")
    tags = {k: m[k] for k in MODEL_METRICS if k in m}
    version, promoted = register(logged_model_uri(run_id), name, run_id, m["best_val_loss"], tags)
    verdict = "now @champion" if promoted else "champion unchanged (it has a lower val_loss)"
    print(f"registered {name} version {version}: {verdict}")
    return version, promoted


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_id", required=True)
    parser.add_argument("--registered_model", default="",
                        help="name in the registry; default prices-{target}-h{horizon}")
    args = parser.parse_args(argv)
    mlflow.set_tracking_uri(tracking_uri())
    cfg = from_params(mlflow.get_run(args.run_id).data.params)
    register_run(args.run_id, args.registered_model or cfg.model_name())


if __name__ == "__main__":
    main()
