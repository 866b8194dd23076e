"""Tasks: one package per kind of problem (prices/, speech/), plugged into steps written
once.

The steps (`prepare`, `train`, `evaluate`, `register`, `predict`, `sweep`, `main`)
never ask which task they run; they call the methods of `Task` below. A task's
module defines `Params` (its own parameters, a dataclass of `params.param` fields),
a `Task` subclass and `TASK`, its instance. To add a kind of problem, write its
loader in data_loaders/, its served model in models/, its package here, and add its
name to TASKS (pipeline/core/params.py). A task imports only the machinery below the
tasks (pipeline/core: params, trainer, checkpoint, signals, distributed, metrics,
plots, horizon) and this module; tests/test_layers.py checks it.

Task modules keep their imports light at the top (the command line imports them
for --help) and import torch, pandas and MLflow inside the methods that need them.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pandas as pd
    import torch

    from pipeline.core.params import Config

from pipeline.core.params import TASKS

ROWS_PER_CALL = 64  # request rows per predict call, when the pipeline feeds a served model


def calls(model, requests: pd.DataFrame) -> list[slice]:
    """The request rows in calls that a served model (unwrapped) takes whole: at most
    ROWS_PER_CALL rows (and its `max_rows`), their sizes within its per-request budget
    (prices, seconds of audio); a row over the budget alone goes alone, and is refused
    by name. Every path that feeds a served model from the pipeline (predict, the
    registry's validation scores) splits its requests here."""
    most = min(ROWS_PER_CALL, getattr(model, "max_rows", ROWS_PER_CALL))
    if not hasattr(model, "budget"):  # logged before models had budgets
        return [slice(i, i + most) for i in range(0, len(requests), most)]
    sizes = [model.size(row) for row in requests.to_dict("records")]
    out, start, used = [], 0, 0.0
    for i, size in enumerate(sizes):
        if i > start and (i - start == most or used + size > model.budget()):
            out.append(slice(start, i))
            start, used = i, 0.0
        used += size
    return out + [slice(start, len(sizes))] if sizes else out


def in_calls(model, requests: pd.DataFrame) -> list[pd.DataFrame]:
    """The request split by `calls`, each part indexed from 0 as a request is."""
    return [requests.iloc[s].reset_index(drop=True) for s in calls(model, requests)]


def log_dataset(frame, source: str, name: str) -> None:
    """Into the active run: a task's input dataset (a pandas frame) with the local path
    it was read from."""
    import warnings

    import mlflow

    with warnings.catch_warnings():  # MLflow registers its local source twice and says so,
        warnings.filterwarnings("ignore", "The specified dataset source")
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")  # counts
        dataset = mlflow.data.from_pandas(frame, source=source, name=name)
        mlflow.log_input(dataset, context="training")


def load(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {name!r}")
    return importlib.import_module(TASKS[name]).TASK


@dataclass
class Objective:
    """What training minimises: `updates(generator, cursor)` yields one (prediction,
    target) pair per optimiser step, `validate()` returns {"val_loss": ..., and any
    other validation metric}, `loss_fn(prediction, target)` is the loss."""

    updates: Callable
    validate: Callable[[], dict]
    loss_fn: Callable
    loss_name: str  # for the loss curve's axis, e.g. "MSE (normalised units)"


@dataclass
class Evaluation:
    """Test results: {method: {metric: value}} for the model ("model", first) and its
    baselines on the same samples, {artifact path: matplotlib figure}, {artifact path:
    a DataFrame (written as CSV) or an object with `save(path)`}, and text to print
    after the table."""

    table: dict[str, dict]
    figures: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)
    text: str = ""


class Task(ABC):
    """What a kind of problem supplies to the steps; a task module must define every
    abstract method (its TASK cannot be made otherwise)."""

    name: str
    Params: type  # the task's own parameters
    sample: Path  # the bundled data, used when `data` is empty
    score_name: str  # the validation score the registry compares, lower is better
    derived_params: tuple = ()  # params training logs beside the config (not config)

    def validate(self, cfg: Config) -> None:
        """Task rules on the whole config (allowed values are checked already); by
        default none beyond the common ones."""
        return None

    def model_name(self, cfg: Config) -> str:
        """The registered model's default name."""
        return self.name

    def run_name(self, cfg: Config) -> str:
        return f"{cfg.model.cell}-{cfg.train.bptt}"

    def folds(self, cfg: Config) -> list[tuple[str, dict]]:
        """Cross-validation asked for by the config: (child run name, params) per fold;
        none by default (one run)."""
        return []

    def serves(self, cfg: Config) -> bool:
        """Whether a run of this config trains a model to register and serve (`main`
        registers it); a cross-validation's fold, trained on part of the data, does not."""
        return True

    @abstractmethod
    def prepare(self, cfg: Config) -> Any:
        """The data as sequences: an object with `summary() -> str` (printed)."""

    @abstractmethod
    def log_data(self, cfg: Config, data) -> None:
        """Into the active run: the dataset (mlflow.log_input), split summary, repairs."""

    @abstractmethod
    def network(self, cfg: Config, data) -> dict:
        """The model spec stored as model.json: at least `model` (the network settings),
        `n_in` and `n_out`, plus what the served model needs to preprocess requests."""

    def pretrain(self, net: torch.nn.Module, spec: dict, cfg: Config, data) -> str:
        """Before training, in place: pretrain `net` (a new network, of `spec`) on `data`;
        returns what was done, in words, "" for nothing (the default)."""
        return ""

    @abstractmethod
    def objective(self, cfg: Config, data, net: torch.nn.Module) -> Objective:
        """What training minimises on `data`, for `net` (on its device)."""

    def horizon(self, net: torch.nn.Module, cfg: Config, data):
        """(gradient norms [K+1], memory horizon) on validation data, or None."""
        return None

    @abstractmethod
    def evaluate(self, net: torch.nn.Module, cfg: Config, data) -> Evaluation:
        """Test metrics of `net` beside the task's baselines, on the same samples."""

    def pool(self, cfg: Config, run_ids: list[str]) -> Evaluation | None:
        """Cross-validation: the folds' test results pooled into one evaluation (logged
        into the parent run), or None when the task has no such pooling."""
        return None

    @abstractmethod
    def served_model(self) -> type:
        """The pyfunc class that serves this task's models (models/)."""

    @abstractmethod
    def log_model(self, net: torch.nn.Module, cfg: Config, data):
        """Log the served model (a pyfunc) into the active run; returns its ModelInfo."""

    @abstractmethod
    def target(self, spec: dict) -> str:
        """What a model predicts, from its spec: models under one registered name must
        agree on it (and on their task and input schema)."""

    @abstractmethod
    def validation_scores(self, models: list, cfg: Config, data) -> list[float]:
        """`score_name` of each served model (unwrapped pyfunc) on the same validation
        samples of `data`, computed from raw inputs through the models' own
        preprocessing, so models trained on other data compare fairly."""

    @abstractmethod
    def requests(self, path: Path, spec: dict, repair: str, market: str = "",
                 skip_bad: bool = False) -> tuple[pd.DataFrame, list]:
        """The request rows the served model takes, from files at `path` (predict), and
        the inputs that could not be read, [(input, why)] (empty unless `skip_bad`: else
        the first stops it, named); a price model trained with a market table reads
        `market` too."""
