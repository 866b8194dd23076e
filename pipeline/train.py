"""Step `train`: fit a network by BPTT and log it as a pyfunc, for any task.

Reads: the data named by the config (see the task's `prepare`). Writes: an MLflow
run with the resolved config as params, the dataset, one `log_metrics` per epoch
(train_loss, val_loss, grad_norm, lr, epoch_seconds and the task's validation
metrics), the loss-curve and memory-horizon plots and the `model`; checkpoints in
`checkpoint_dir`/RUN_ID. With resume_run_id it continues that run from its latest
checkpoint.

    python -m pipeline.train --cell gru --bptt truncated
    mlflow run . -e train --env-manager local --experiment-name prices -P cell=gru
"""

from __future__ import annotations

from pipeline import cli, tasks


def new_network(cfg, spec: dict):
    """The network to train: seeded initial weights, or a logged model's (`init_from`),
    on the configured device."""
    from models.networks import build_model, resolve_device
    from pipeline.tracking import load_initial_weights
    from pipeline.trainer import seed_everything

    seed_everything(cfg.train.seed)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    if cfg.train.init_from:
        load_initial_weights(net, cfg.train.init_from)
    return net.to(resolve_device(cfg.model.device))


def train_and_log(cfg, task, data):
    """Inside an active run: params, dataset, per-epoch metrics, checkpoints, plots and
    the model. Returns the trained network (on the CPU) and its History."""
    import mlflow

    from pipeline import plots
    from pipeline.horizon import THRESHOLD
    from pipeline.tracking import MODEL_URI_TAG, epoch_logger, log_config, run_checkpoints
    from pipeline.trainer import fit

    log_config(cfg)
    resumed = bool(cfg.tracking.resume_run_id)
    if not resumed:  # a resumed run has its dataset
        task.log_data(cfg, data)
    net = new_network(cfg, task.network(cfg, data))
    goal = task.objective(cfg, data, net)
    history = fit(net, cfg.train, goal.updates, goal.validate, goal.loss_fn,
                  on_epoch=epoch_logger(mlflow.active_run().info.run_id),
                  checkpoints=run_checkpoints(cfg), resume=resumed)
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


def report(run, cfg, history) -> str:
    """The run's one-line summary; epochs counted from 1, as the progress lines count
    them (the `best_epoch` metric is the MLflow step, from 0)."""
    return (f"run {run.info.run_id} in experiment {cfg.tracking.experiment}: best val_loss "
            f"{history.best_val_loss:.5g} at epoch {history.best_epoch + 1} of "
            f"{len(history.epochs)} ({history.stop_reason})")


def main(argv=None) -> None:
    cfg, _ = cli.parse_config(argv, __doc__)
    from pipeline.tracking import resume_config, start_run  # after parsing: fast --help

    cfg = resume_config(cfg)
    task = tasks.load(cfg.task_name)
    data = task.prepare(cfg)
    print(data.summary())
    with start_run(cfg, run_name=task.run_name(cfg)) as run:
        _, history = train_and_log(cfg, task, data)
    print(report(run, cfg, history))

if __name__ == "__main__":
    cli.run(main)
