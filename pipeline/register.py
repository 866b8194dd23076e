"""Step `register`: add a run's model to the Model Registry.

Reads: the run's `model`, its params and metrics (and, when the name has a
champion, the run's validation data to score both on). Writes: a new version of
the registered model (default: the run's `registered_model` param), tagged with
the model's test metrics and the comparison; the alias `champion` moves to it only
when it beats the champion on the same validation samples (see pipeline/core/registry.py).

    python -m pipeline.register --run_id RUN_ID
    mlflow run . -e register --env-manager local -P run_id=RUN_ID
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import tasks
from pipeline.core import cli
from pipeline.core.params import check_registered_model, param


@dataclass
class RegisterParams:
    run_id: str = param("", "the training run whose model to register", required=True)
    registered_model: str = param("", "registry name; empty: the run's registered_model param")


def register_run(run_id: str, cfg, data=None) -> tuple[str, bool]:
    """Register the run's model under cfg.tracking.registered_model; `data`, the run's
    prepared data when at hand (otherwise prepared again if a comparison needs it).
    Returns (version, whether it is @champion)."""
    import mlflow

    from pipeline.core import registry
    from pipeline.core.tracking import load_served, logged_model_uri

    task = tasks.load(cfg.task_name)
    run = mlflow.get_run(run_id)
    if "folds" in run.data.tags or not task.serves(cfg):
        raise ValueError(f"run_id: run {run_id} is a cross-validation's "
                         f"{'parent' if 'folds' in run.data.tags else 'fold'}: its models "
                         "know part of the data only; to register a model to serve, train it "
                         "on all the data")
    if "best_val_loss" not in run.data.metrics:
        raise ValueError(f"run_id: run {run_id} has no trained model (no best_val_loss); "
                         "was it a training run that finished?")
    metrics = run.data.metrics
    names = [n for n in run.data.tags.get("test_metrics", "").split(",") if n in metrics]
    uri = logged_model_uri(run_id)
    done = registry.register(
        task, cfg, run_id, uri, load_served(uri, "run_id"),
        lambda: data if data is not None else task.prepare(cfg),
        {n: metrics[n] for n in (*names, "best_val_loss")})
    name = cfg.tracking.registered_model
    if not done.added:
        print(f"run {run_id} is already version {done.version} of {name}"
              f"{' (@champion)' if done.champion else ''}: nothing registered")
    else:
        print(f"registered {name} version {done.version}: "
              + ("now @champion" if done.champion else "champion unchanged") + f" ({done.why})")
    return done.version, done.champion


def parse(argv=None) -> RegisterParams:
    """The parameters this command line would run with, checked (every step has `parse`;
    the docs' commands are checked with it)."""
    return cli.parse_params(argv, __doc__, RegisterParams)


def main(argv=None) -> None:
    p = parse(argv)
    from pipeline.core.tracking import note_launcher, run_config  # after parsing: fast --help

    cfg = run_config(p.run_id)
    check_registered_model(p.registered_model)
    cfg.tracking.registered_model = p.registered_model or cfg.tracking.registered_model
    note_launcher(f"This launch registered run {p.run_id}'s model as "
                  f"{cfg.tracking.registered_model}.")
    register_run(p.run_id, cfg)

if __name__ == "__main__":
    cli.run(main)
