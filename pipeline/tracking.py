"""MLflow set-up and the Model Registry rules.

With MLFLOW_TRACKING_URI unset, runs go to embedded SQLite in the project folder
(`mlflow.db`), MLflow 3's default, never the deprecated file store; with it
set (say a shared server on PostgreSQL), there.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.checkpoint import Checkpoints
from pipeline.config import ROOT, Config, from_params
from pipeline.trainer import Interrupted

CHAMPION = "champion"
MODEL_URI_TAG = "model_uri"  # set by the train step: the URI of the run's logged model
# MLflow's per-file download bars drown the training output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


@contextlib.contextmanager
def start_run(cfg: Config, run_name: str | None = None, run_id: str | None = None,
              nested: bool = False):
    """An active run in the config's experiment (or the run `mlflow run` started, or
    the run being resumed). Training stopped by SIGTERM/SIGINT ends it KILLED and exits
    with 128 + the signal's number, after saying how to resume."""
    mlflow.set_tracking_uri(tracking_uri())
    run_id = run_id or cfg.tracking.resume_run_id or None
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if not run_id and not launcher and not nested:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.tracking.experiment)
    if cfg.tracking.resume_run_id and launcher and launcher != run_id:
        # `mlflow run` opened a new run; the training goes on in the resumed one
        MlflowClient().set_tag(launcher, "mlflow.note.content",
                               f"This launch resumed run {run_id}; its results are there.")
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                          nested=nested) as run:
        try:
            yield run
        except Interrupted as stop:
            mlflow.end_run("KILLED")
            print(f"\n{stop}\nresume with: mlflow run . --env-manager local -P resume_run_id="
                  f"{run.info.run_id} (or python -m pipeline.main --resume_run_id "
                  f"{run.info.run_id})", file=sys.stderr)
            raise SystemExit(128 + stop.signum) from None
        except SystemExit as stop:  # a nested run (a sweep's child) was interrupted
            if isinstance(stop.code, int) and stop.code > 128:
                mlflow.end_run("KILLED")
            raise


def resume_config(cfg: Config) -> Config:
    """With resume_run_id set: the config that run was started with (its params)."""
    run_id = cfg.tracking.resume_run_id
    if not run_id:
        return cfg
    mlflow.set_tracking_uri(tracking_uri())
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise ValueError(f"resume_run_id: no run {run_id!r} in {tracking_uri()}") from None
    if run.info.status == "FINISHED":
        raise ValueError(f"resume_run_id: run {run_id} has finished; nothing to resume")
    resumed = from_params(run.data.params)
    resumed.tracking.resume_run_id = run_id
    return resumed


def run_checkpoints(cfg: Config) -> Checkpoints:
    """The active run's checkpoint folder, `checkpoint_dir` (relative to the working
    directory) / RUN_ID, kept in the run's `checkpoint_dir` tag for a resumed run."""
    run = mlflow.active_run()
    folder = run.data.tags.get("checkpoint_dir") if cfg.tracking.resume_run_id else None
    if not folder:
        folder = str(Path(cfg.train.checkpoint_dir).resolve() / run.info.run_id)
        mlflow.set_tag("checkpoint_dir", folder)
    return Checkpoints(folder, cfg.train.checkpoint_every)


def epoch_logger(run_id: str):
    """Logs an epoch's metrics at step = epoch, unless the run has that step already
    (a resumed run offers again the epochs of its checkpoint)."""
    done = {m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")}

    def log(metrics: dict) -> None:
        if metrics["epoch"] not in done:
            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"},
                               step=metrics["epoch"])
            done.add(metrics["epoch"])

    return log


def log_dataset(frame, source: str, name: str) -> None:
    """The run's input dataset (a pandas frame) with where it came from."""
    with warnings.catch_warnings():  # MLflow registers its local source twice and says so,
        warnings.filterwarnings("ignore", "The specified dataset source")
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")  # counts
        dataset = mlflow.data.from_pandas(frame, source=source, name=name)
        mlflow.log_input(dataset, context="training")


def log_new_params(params: dict) -> None:
    """Log params the active run does not have yet: `mlflow run` logs the MLproject
    parameters itself, and MLflow refuses to log a param twice."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


def logged_model_uri(run_id: str) -> str:
    run = mlflow.get_run(run_id)
    return run.data.tags.get(MODEL_URI_TAG, f"runs:/{run_id}/model")


def load_initial_weights(net, uri: str) -> None:
    """Warm start: copy the weights of the logged model at `uri` into `net`, which must
    have the same parameters of the same shapes; otherwise say exactly what differs."""
    import torch

    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as err:
        raise ValueError(f"init_from: cannot load {uri}: {err.message}") from None
    weights = os.path.join(folder, "artifacts", "weights.pt")
    if not os.path.exists(weights):
        raise ValueError(f"init_from: {uri} is not a model of this project (no weights.pt)")
    theirs = torch.load(weights, map_location="cpu", weights_only=True)
    ours = net.state_dict()
    problems = [f"{k}: {list(theirs[k].shape)} there, {list(v.shape)} here"
                for k, v in ours.items() if k in theirs and theirs[k].shape != v.shape]
    problems += [f"{k}: only here" for k in ours if k not in theirs]
    problems += [f"{k}: only there" for k in theirs if k not in ours]
    if problems:
        raise ValueError(f"init_from: {uri} does not fit this network; "
                         + "; ".join(problems[:10])
                         + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    net.load_state_dict(theirs)


def register(model_uri: str, name: str, run_id: str, val_loss: float,
             tags: dict[str, float]) -> tuple[str, bool]:
    """Register a new version, tag it with its metrics, and move @champion to it when
    its validation loss beats the current champion's. Returns (version, promoted)."""
    client = MlflowClient()
    version = str(mlflow.register_model(model_uri, name).version)
    for key, value in {**tags, "val_loss": val_loss, "run_id": run_id}.items():
        client.set_model_version_tag(name, version, key, str(value))
    current = champion_val_loss(name)
    promoted = current is None or val_loss < current
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return version, promoted


def champion_val_loss(name: str) -> float | None:
    try:
        champ = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return float(champ.tags["val_loss"])
