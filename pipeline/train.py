"""Step `train`: fit a network by BPTT and log it as a pyfunc.

Reads: the price data named by the config (see `prepare`). Writes: an MLflow run
with the resolved config as params, one `log_metrics` per epoch (train_loss,
val_loss, grad_norm, lr, epoch_seconds), the loss-curve and memory-horizon plots
and the `model`; checkpoints in `checkpoint_dir`/RUN_ID. With resume_run_id it
continues that run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch

from models.networks import build_model, resolve_device
from models.pyfunc import log_price_model, output_names, price_columns, request_row
from pipeline import plots
from pipeline.checkpoint import Checkpoints
from pipeline.config import Config, add_arguments, from_args
from pipeline.horizon import THRESHOLD, validation_horizon
from pipeline.prepare import Prepared, log_dataset, prepare
from pipeline.tracking import (
    MODEL_URI_TAG,
    epoch_logger,
    load_initial_weights,
    log_new_params,
    resume_config,
    run_checkpoints,
    start_run,
)
from pipeline.trainer import History, fit_streams, seed_everything


def model_spec(cfg: Config, prep: Prepared) -> dict:
    """What model.json stores: enough to rebuild the network and its preprocessing."""
    m, d = cfg.model, cfg.data
    net = {k: getattr(m, k) for k in ("cell", "hidden", "layers", "dropout", "norm", "init")}
    return {"model": {**net, "lookback": d.lookback}, "bptt": cfg.train.bptt,
            "lookback": d.lookback, "target": d.target, "horizon": d.horizon,
            "features": prep.features, "outputs": output_names(d.target, d.horizon)}


def new_network(cfg: Config, net_cfg: dict, n_in: int, n_out: int) -> torch.nn.Module:
    """The network to train: seeded initial weights, or a logged model's (`init_from`),
    on the configured device."""
    seed_everything(cfg.train.seed)
    net = build_model(net_cfg, n_in, n_out)
    if cfg.train.init_from:
        load_initial_weights(net, cfg.train.init_from)
    return net.to(resolve_device(cfg.model.device))


def train_model(cfg: Config, prep: Prepared, on_epoch=None,
                checkpoints: Checkpoints | None = None) -> tuple[torch.nn.Module, History]:
    spec = model_spec(cfg, prep)
    net = new_network(cfg, spec["model"], len(prep.features), len(spec["outputs"]))
    device = next(net.parameters()).device
    history = fit_streams(net, prep.streams(device), cfg.train, cfg.data.lookback, on_epoch,
                          checkpoints=checkpoints, resume=bool(cfg.tracking.resume_run_id))
    return net.cpu(), history


def example_input(prep: Prepared, spec: dict) -> pd.DataFrame:
    """A real request: the last lookback + 1 prices of the first series."""
    name = prep.names[0]
    tail = prep.frames[name].iloc[-(spec["lookback"] + 1):]
    return pd.DataFrame([request_row(tail, name, price_columns(spec))])


def train_and_log(cfg: Config, prep: Prepared) -> tuple[torch.nn.Module, History, str]:
    """Inside an active run: params, dataset, per-epoch metrics, checkpoints, plot, model.
    Returns the network, its history and the logged model's URI."""
    log_new_params(cfg.params())
    if not cfg.tracking.resume_run_id:  # a resumed run has its dataset
        log_dataset(prep)
    run_id = mlflow.active_run().info.run_id
    net, history = train_model(cfg, prep, epoch_logger(run_id), run_checkpoints(cfg))
    mlflow.log_metrics({"best_val_loss": history.best_val_loss,
                        "best_epoch": history.best_epoch, "epochs_run": len(history.epochs)})
    mlflow.set_tag("stop_reason", history.stop_reason)
    plots.log_figure(plots.loss_curves(history.epochs), "plots/loss_curves.png")
    if cfg.model.cell != "mlp":  # the MLP has no state to measure
        norms, reach = validation_horizon(net, prep.streams(), cfg.data.lookback)
        mlflow.log_metric("memory_horizon", reach)
        plots.log_figure(plots.gradient_horizon(norms, reach, THRESHOLD),
                         "plots/memory_horizon.png")
    spec = model_spec(cfg, prep)
    with tempfile.TemporaryDirectory() as tmp:
        info = log_price_model(Path(tmp), net, spec, prep.x_norm, prep.y_norm,
                               example_input(prep, spec))
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)  # what `register` registers
    return net, history, info.model_uri


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    cfg = resume_config(from_args(parser.parse_args(argv)))
    prep = prepare(cfg)
    with start_run(cfg, run_name=f"{cfg.model.cell}-{cfg.train.bptt}") as run:
        _, history, _ = train_and_log(cfg, prep)
    print(f"run {run.info.run_id}: best val_loss {history.best_val_loss:.5f} "
          f"at epoch {history.best_epoch} ({history.stop_reason})")


if __name__ == "__main__":
    main()
