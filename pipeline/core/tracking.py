"""MLflow set-up: where runs go, the run a step works in, and a run's config.

With MLFLOW_TRACKING_URI unset, runs go to embedded SQLite in the project folder
(`mlflow.db`), MLflow 3's default, never the deprecated file store; with it
set (say a shared server on PostgreSQL), there.

Under `mlflow run`, MLflow opens the run (in the experiment of --experiment-name)
and logs the -P values before our code starts; the step works in that run and
logs the rest of the resolved config. With `python -m`, the step opens the run in
the config's experiment (the task's name by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline import __version__, tasks
from pipeline.core.config import from_params
from pipeline.core.params import Config
from pipeline.core.signals import Interrupted, RankLost

MODEL_URI_TAG = "model_uri"  # set by the train step: the URI of the run's logged model
WORKDIR_TAG = "workdir"  # the folder the run's relative paths are taken from
VERSION_TAG = "seqpredict_version"  # the project's version that made the run (CHANGELOG.md)
# MLflow's per-file download bars drown the training output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else MLflow's own default: `mlflow.db` in the working
    directory, the store `mlflow run` started there uses too."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def launcher_run_id() -> str | None:
    """The run `mlflow run` opened for this launch, if it launched us."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def note_launcher(message: str) -> None:
    """Under `mlflow run`, when the work lands in another run (evaluate, register,
    resume), say so on the run it opened."""
    launcher = launcher_run_id()
    if launcher:
        MlflowClient().set_tag(launcher, "mlflow.note.content", message)


def adopt_launcher_experiment(cfg: Config) -> None:
    """Under `mlflow run`, the experiment is the one MLflow put the run in; an
    `experiment` param cannot move it."""
    launcher = MlflowClient().get_run(launcher_run_id())
    if "experiment" in launcher.data.params:
        raise ValueError("experiment: under mlflow run, choose the experiment with "
                         "--experiment-name; the experiment param is for python -m")
    cfg.tracking.experiment = MlflowClient().get_experiment(
        launcher.info.experiment_id).name
    if cfg.tracking.experiment == "Default" or (cfg.tracking.experiment in tasks.TASKS
                                                 and cfg.tracking.experiment != cfg.task_name):
        print(f"note: mlflow run put this {cfg.task_name} run in the experiment "
              f"'{cfg.tracking.experiment}'; pass --experiment-name {cfg.task_name} to file it "
              "with its task", flush=True)


@contextlib.contextmanager
def start_run(cfg: Config, run_name: str | None = None, run_id: str | None = None,
              nested: bool = False):
    """The active run: `run_id` or the one being resumed; else, under `mlflow run`, the
    run it opened; else a new run in the config's experiment. Training stopped by
    SIGTERM/SIGINT ends it KILLED and exits with 128 + the signal's number, after
    saying how to resume."""
    mlflow.set_tracking_uri(tracking_uri())
    run_id = run_id or cfg.tracking.resume_run_id or None
    if run_id:
        note_launcher(f"This launch worked in run {run_id}; its results are there.")
    elif launcher_run_id() and not nested:
        adopt_launcher_experiment(cfg)
    elif not nested:
        mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                          nested=nested) as run:
        try:
            yield run
        except Interrupted as stop:
            mlflow.end_run("KILLED")
            print(f"\n{stop}\n{after_stop(cfg, run.info.run_id, stop.path)}", file=sys.stderr)
            raise SystemExit(128 + stop.signum) from None
        except RankLost:  # the run ends FAILED; it resumes from its latest checkpoint
            print(f"resume with: {resume_command(cfg, run.info.run_id)}", file=sys.stderr)
            raise
        except SystemExit as stop:  # a nested run (a sweep's child) was interrupted
            if isinstance(stop.code, int) and stop.code > 128:
                mlflow.end_run("KILLED")
            raise


def after_stop(cfg: Config, run_id: str, written=None) -> str:
    """What to do about a run stopped by a signal: resume it from the checkpoint just
    `written` or its latest one, or start it again when none was written yet (stopped
    while preparing the data or pretraining: the checkpoint folder is named when
    training starts)."""
    from pipeline.core.checkpoint import LATEST

    folder = MlflowClient().get_run(run_id).data.tags.get("checkpoint_dir")
    if written or (folder and (Path(folder) / LATEST).exists()):
        return f"resume with: {resume_command(cfg, run_id)}"
    return "no checkpoint written yet: nothing to resume; start the run again"


def resume_command(cfg: Config, run_id: str) -> str:
    """How to continue a stopped run, with the launcher it was started by."""
    if "LOCAL_RANK" in os.environ:  # torchrun's
        ranks = os.environ.get("WORLD_SIZE", "1")
        return (f"torchrun --standalone --nproc_per_node={ranks} -m pipeline.main "
                f"--resume_run_id {run_id}")
    return (f"mlflow run . --env-manager local --experiment-name {cfg.tracking.experiment} -P "
            f"resume_run_id={run_id} (or python -m pipeline.main --resume_run_id {run_id})")


def log_config(cfg: Config, extra: dict[str, str] | None = None) -> None:
    """The resolved config (and a step's `extra` params) as the active run's params,
    and where its relative paths are taken from. Params `mlflow run` logged already
    (the -P values, with the same meaning) are left as they are: MLflow refuses to
    log a param twice."""
    run = mlflow.get_run(mlflow.active_run().info.run_id)
    logged = run.data.params
    params = {**cfg.params(), **(extra or {})}
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    if WORKDIR_TAG not in run.data.tags:
        mlflow.set_tags({WORKDIR_TAG: str(cfg.base), VERSION_TAG: __version__})


def run_config(run_id: str, what: str = "run_id") -> Config:
    """The config a logged run was trained with; relative paths from where it ran.
    Errors name the parameter `what` that gave the run id."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise ValueError(f"{what}: no run {run_id!r} in {tracking_uri()}") from None
    if "grid" in run.data.params:
        best = run.data.tags.get("best_run_id", "one of its children")
        raise ValueError(f"{what}: run {run_id} is a sweep's parent; give one of its child "
                         f"runs (the best: {best})")
    if "task" not in run.data.params:
        raise ValueError(f"{what}: run {run_id} has no task param; it is not a training run "
                         "of this project (or was logged by an older version)")
    base = run.data.tags.get(WORKDIR_TAG)
    return from_params(run.data.params, Path(base) if base else None)


def resume_config(cfg: Config) -> Config:
    """With resume_run_id set: the config that run was started with (its params)."""
    run_id = cfg.tracking.resume_run_id
    if not run_id:
        return cfg
    resumed = run_config(run_id, "resume_run_id")
    if MlflowClient().get_run(run_id).info.status == "FINISHED":
        raise ValueError(f"resume_run_id: run {run_id} has finished; nothing to resume")
    resumed.tracking.resume_run_id = run_id
    return resumed


def run_checkpoints(cfg: Config):
    """The active run's checkpoint folder, `checkpoint_dir` / RUN_ID, kept in the run's
    `checkpoint_dir` tag for a resumed run."""
    from pipeline.core.checkpoint import Checkpoints

    run = mlflow.active_run()
    folder = run.data.tags.get("checkpoint_dir") if cfg.tracking.resume_run_id else None
    if not folder:
        folder = str(cfg.path(cfg.train.checkpoint_dir).resolve() / run.info.run_id)
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


def logged_model_uri(run_id: str) -> str:
    """The URI of the model a training run logged."""
    uri = mlflow.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not uri:
        raise ValueError(f"run_id: run {run_id} has no logged model; give the run of a "
                         "train or main step (that finished training)")
    return uri


def load_model(uri: str, what: str = "model_uri"):
    """The pyfunc at `uri`; an error names the parameter `what` and the store."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        message = err.message if isinstance(err, MlflowException) else str(err)
        raise ValueError(f"{what}: cannot load {uri} from {tracking_uri()}: "
                         f"{message.splitlines()[0]}") from None


def load_served(uri: str, what: str = "model_uri"):
    """The served model at `uri`, unwrapped (its own predict, `spec` and `net`)."""
    return load_model(uri, what).unwrap_python_model()


def load_initial_weights(net, uri: str, spec: dict | None = None) -> str:
    """Warm start from the logged model at `uri`; returns what was copied, in words.

    A model of the same task (or `spec` not given) gives every weight: `net` must have
    the same parameters of the same shapes. A model of another task on the same inputs
    (pretraining: a speech-forecast model for speech-classify) gives its body, every
    weight but its output layer (`head`); each must have its place and shape here, and
    what it has no weight for (the backward direction of a bidirectional layer, the
    head) keeps its initial values. Otherwise the error says exactly what differs."""
    import torch

    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as err:
        raise ValueError(f"init_from: cannot load {uri}: {err.message}") from None
    weights = os.path.join(folder, "artifacts", "weights.pt")
    if not os.path.exists(weights):
        raise ValueError(f"init_from: {uri} is not a model of this project (no weights.pt)")
    theirs = torch.load(weights, map_location="cpu", weights_only=True)
    with open(os.path.join(folder, "artifacts", "model.json")) as f:
        source = json.load(f)
    ours = net.state_dict()
    across = spec is not None and source.get("task") != spec.get("task")
    if across:
        _same_inputs(uri, source, spec)
        theirs = {k: v for k, v in theirs.items() if not k.startswith("head.")}
    problems = [f"{k}: {list(v.shape)} there, {list(ours[k].shape)} here"
                for k, v in theirs.items() if k in ours and ours[k].shape != v.shape]
    problems += [f"{k}: only there" for k in theirs if k not in ours]
    problems += [] if across else [f"{k}: only here" for k in ours if k not in theirs]
    if problems:
        raise ValueError(f"init_from: {uri} does not fit this network; "
                         + "; ".join(problems[:10])
                         + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    net.load_state_dict({**ours, **theirs})
    kept = [k for k in ours if k not in theirs]
    return (f"{len(theirs)} of {len(ours)} weight tensors from {uri}"
            + (f" (a {source.get('task')} model); kept at their initial values: "
               f"{', '.join(kept)}" if across else ""))


def _same_inputs(uri: str, source: dict, spec: dict) -> None:
    """A model of another task can start this one only if its inputs mean the same."""
    differ = [f"{k}: {source.get(k)!r} there, {spec.get(k)!r} here"
              for k in ("n_in", "audio", "features", "normalise") if source.get(k) != spec.get(k)]
    if differ:
        raise ValueError(f"init_from: {uri} is a {source.get('task')} model whose inputs "
                         f"differ from this {spec.get('task')} model's: " + "; ".join(differ))
