"""Saving and logging a pyfunc the way this project stores models: plain files
(`weights.pt` state_dict, `model.json`, `normaliser.json`), the class from code,
this project's packages as code_paths and the serving pins of pyproject.toml."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "data_loaders")  # shipped with the model as code_paths


def write_artifacts(folder: Path, net: torch.nn.Module, spec: dict, normaliser: dict) -> dict:
    """The three files a model is made of; returns {artifact name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"weights": folder / "weights.pt", "config": folder / "model.json",
             "normaliser": folder / "normaliser.json"}
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, paths["weights"])
    paths["config"].write_text(json.dumps(spec, indent=2))
    paths["normaliser"].write_text(json.dumps(normaliser))
    return {k: str(v) for k, v in paths.items()}


def log_pyfunc(model_class, entry_file: str, artifacts: dict, signature,
               example: pd.DataFrame):
    """Log into the active run; returns MLflow's ModelInfo. The model first predicts on
    the example here, since MLflow only warns when its own check of the example fails."""
    model_class().load(artifacts).predict(None, example)
    with warnings.catch_warnings():  # count columns are ints on purpose, never missing
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(ROOT / "models" / entry_file), artifacts=artifacts,
            code_paths=[str(ROOT / p) for p in PACKAGES], signature=signature,
            input_example=example, pip_requirements=requirements())


def requirements() -> list[str]:
    """The serving dependencies, pinned as in pyproject.toml."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if d.split("==")[0] not in ("yfinance", "librosa", "matplotlib",
                                                         "tqdm")]
