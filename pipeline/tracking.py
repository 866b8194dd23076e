"""MLflow set-up and the Model Registry rules.

With MLFLOW_TRACKING_URI unset, runs go to embedded SQLite in the project folder
(`mlflow.db`), MLflow 3's default, never the deprecated file store; with it
set (say a shared server on PostgreSQL), there.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.config import ROOT, Config

CHAMPION = "champion"
MODEL_URI_TAG = "model_uri"  # set by the train step: the URI of the run's logged model
# MLflow's per-file download bars drown the training output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


@contextlib.contextmanager
def start_run(cfg: Config, run_name: str | None = None, run_id: str | None = None):
    """An active run in the config's experiment (or the run `mlflow run` started)."""
    mlflow.set_tracking_uri(tracking_uri())
    if not run_id and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.tracking.experiment)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        yield run


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
