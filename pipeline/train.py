"""Step `train`: fit a network by BPTT and log it as a pyfunc, for any task.

Reads: the data named by the config (see the task's `prepare`). Writes: an MLflow
run with the resolved config as params, the dataset, one `log_metrics` per epoch
(train_loss, val_loss, grad_norm, lr, train_seconds, epoch_seconds and the task's
validation metrics), the loss-curve and memory-horizon plots and the `model`; checkpoints in
`checkpoint_dir`/RUN_ID. With resume_run_id it continues that run from its latest
checkpoint.

    python -m pipeline.train --cell gru --bptt truncated
    mlflow run . -e train --env-manager local --experiment-name prices -P cell=gru
    torchrun --standalone --nproc_per_node=2 -m pipeline.train --bptt truncated

Under torchrun, data-parallel across the ranks (pipeline/core/distributed.py).
"""

from __future__ import annotations

from pipeline import tasks
from pipeline.core import cli


def new_network(cfg, spec: dict):
    """The network to train: seeded initial weights, or a logged model's (`init_from`),
    on the configured device."""
    from models.networks import build_model, resolve_device
    from pipeline.core.tracking import load_initial_weights
    from pipeline.core.trainer import seed_everything

    seed_everything(cfg.train.seed)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    if cfg.train.init_from:
        import mlflow

        said = load_initial_weights(net, cfg.train.init_from, spec)
        print(f"init_from: {said}", flush=True)
        if mlflow.active_run():
            mlflow.set_tag("init_from_weights", said)
    return net.to(resolve_device(cfg.model.device))


def train_and_log(cfg, task, data):
    """Inside an active run: params, dataset, per-epoch metrics, checkpoints, plots and
    the model. Returns the trained network (on the CPU) and its History."""
    import mlflow

    from pipeline.core import distributed, plots
    from pipeline.core.horizon import THRESHOLD
    from pipeline.core.tracking import MODEL_URI_TAG, epoch_logger, log_config, run_checkpoints
    from pipeline.core.trainer import fit

    log_config(cfg)
    resumed = bool(cfg.tracking.resume_run_id)
    if not resumed:  # a resumed run has its dataset
        task.log_data(cfg, data)
    if distributed.active():
        mlflow.set_tag("ranks", str(distributed.size()))
    spec = task.network(cfg, data)
    net = new_network(cfg, spec)
    if not resumed and (said := task.pretrain(net, spec, cfg, data)):  # resumed: in its weights
        print(f"pretrained: {said}", flush=True)
        mlflow.set_tag("pretrained", said)
    model = distributed.wrap(net)
    goal = task.objective(cfg, data, model)
    checkpoints = run_checkpoints(cfg)
    distributed.broadcast(str(checkpoints.folder))  # to the other ranks (train_rank)
    history = fit(model, cfg.train, goal.updates, goal.validate, goal.loss_fn,
                  on_epoch=epoch_logger(mlflow.active_run().info.run_id),
                  checkpoints=checkpoints, resume=resumed)
    distributed.teardown()
    net.cpu()
    mlflow.log_metrics({"best_val_loss": history.best_val_loss,
                        "best_epoch": history.best_epoch, "epochs_run": len(history.epochs)})
    mlflow.set_tag("stop_reason", history.stop_reason)
    plots.log_figure(plots.loss_curves(history.epochs, goal.loss_name), "plots/loss_curves.png")
    if reach := task.horizon(net, cfg, data):
        mlflow.log_metric("memory_horizon", reach[1])
        plots.log_figure(plots.gradient_horizon(*reach, THRESHOLD), "plots/memory_horizon.png")
    info = task.log_model(net, cfg, data)
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)  # what `register` registers
    return net, history


def other_rank(cfg) -> bool:
    """Under torchrun (pipeline/core/distributed.py): join the process group and, on a rank
    other than 0, train this rank's share and say True: the step has nothing else to do
    there (rank 0 logs, evaluates and registers)."""
    from pipeline.core import distributed

    if not distributed.launched():
        return False
    if tasks.load(cfg.task_name).folds(cfg):
        raise ValueError("folds: a cross-validation runs its folds one after another in one "
                         "process; start it without torchrun")
    if cfg.model.norm == "batch":
        raise ValueError("norm=batch under torchrun: each rank would normalise by its own "
                         "share of the batch; use norm=layer, or train in one process")
    distributed.setup(cfg.model.device, cfg.train.dist_timeout)
    if distributed.is_main():
        return False
    train_rank(cfg)
    return True


def train_rank(cfg) -> None:
    """A rank other than 0: the same data and network, its share of every update, and
    nothing logged or written (rank 0 sends the checkpoint folder, for a resume)."""
    from pipeline.core import distributed
    from pipeline.core.checkpoint import Checkpoints
    from pipeline.core.signals import Interrupted
    from pipeline.core.trainer import fit

    task = tasks.load(cfg.task_name)
    data = task.prepare(cfg)
    model = distributed.wrap(new_network(cfg, task.network(cfg, data)))
    goal = task.objective(cfg, data, model)
    folder = distributed.broadcast(None)
    try:
        fit(model, cfg.train, goal.updates, goal.validate, goal.loss_fn, progress=False,
            checkpoints=Checkpoints(folder, cfg.train.checkpoint_every),
            resume=bool(cfg.tracking.resume_run_id))
    except Interrupted as stop:  # rank 0 says it, and how to resume
        raise SystemExit(128 + stop.signum) from None
    distributed.teardown()


def report(run, cfg, history) -> str:
    """The run's one-line summary; epochs counted from 1, as the progress lines count
    them (the `best_epoch` metric is the MLflow step, from 0)."""
    return (f"run {run.info.run_id} in experiment {cfg.tracking.experiment}: best val_loss "
            f"{history.best_val_loss:.5g} at epoch {history.best_epoch + 1} of "
            f"{len(history.epochs)} ({history.stop_reason})")


def parse(argv=None):
    """The config this command line would run, checked (every step has `parse`; the
    docs' commands are checked with it)."""
    return cli.parse_config(argv, __doc__)[0]


def main(argv=None) -> None:
    cfg = parse(argv)
    from pipeline.core.tracking import resume_config, start_run  # after parsing: fast --help

    cfg = resume_config(cfg)
    if other_rank(cfg):
        return
    task = tasks.load(cfg.task_name)
    data = task.prepare(cfg)
    print(data.summary())
    with start_run(cfg, run_name=task.run_name(cfg)) as run:
        _, history = train_and_log(cfg, task, data)
    print(report(run, cfg, history))

if __name__ == "__main__":
    cli.run(main)
