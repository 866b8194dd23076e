"""Fixtures shared by the tests: a store per test, the bundled data, small FSDD subsets,
and launching steps the two ways a user does (`python -m`, `mlflow run`)."""

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
PRICES = ROOT / "data" / "prices"
FSDD = ROOT / "data" / "fsdd" / "recordings"
SPY = str(PRICES / "SPY.csv")
LAUNCH_ENV = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
# The longest files, started first so that `make test`'s two workers (pytest-xdist,
# whole files each) end together. test_speech_recipe.py stays after test_readme_commands.py,
# which fills the synthetic-voice and feature caches it reuses.
FIRST = ("test_readme_commands.py", "test_matrix.py")


def pytest_collection_modifyitems(items):
    first = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: file order kept


@contextlib.contextmanager
def fresh_store(folder: Path):
    """A new SQLite store in `folder`, which is also the working directory (new
    experiments put their artifacts under it) while the block runs."""
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield folder
    finally:
        os.chdir(old_cwd)
        # mlflow.set_experiment exports the id; it must not leak into the next store
        for name in LAUNCH_ENV:
            os.environ.pop(name, None)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite store in tmp_path, which is also the working directory."""
    with fresh_store(tmp_path):
        yield tmp_path


@pytest.fixture(scope="session")
def small_fsdd(tmp_path_factory):
    """Digits 0-2, takes 0-9, four of the six speakers: 120 real files."""
    folder = tmp_path_factory.mktemp("fsdd")
    for f in FSDD.glob("[012]_*.wav"):
        if f.stem.split("_")[1] in ("theo", "yweweler"):
            continue
        if int(f.stem.split("_")[2]) < 10:
            shutil.copy(f, folder)
    return folder


def launch_env(uri: str) -> dict:
    """The environment of a step launched as a user would: the venv's bin first (mlflow
    starts `python` by name), one OpenMP thread (processes share two cores)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return env | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                  "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}


def python_m(step: str, args: list[str], cwd: Path, uri: str, timeout: float = 600):
    """`python -m pipeline.STEP ARGS` in `cwd`."""
    return subprocess.run([sys.executable, "-m", f"pipeline.{step}", *args], cwd=cwd,
                          env=launch_env(uri), capture_output=True, text=True, timeout=timeout)


def mlflow_run(entry: str, params: dict, cwd: Path, uri: str, experiment: str | None = None,
               timeout: float = 600):
    """`mlflow run ROOT -e ENTRY --env-manager local [--experiment-name E] -P k=v ...`."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager",
           "local", *(["--experiment-name", experiment] if experiment else [])]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=cwd, env=launch_env(uri), capture_output=True, text=True,
                          timeout=timeout)


def price_forecaster(folder: Path, bptt: str = "full", lookback: int = 8, cell: str = "gru",
                     loss: str = "mse", quantiles: tuple = (), scale_free: bool = False,
                     layers: int = 1, market: bool = False):
    """A served price model with random weights (hidden 8, 2-day returns or, scale-free,
    5-day volatility, trained with `loss`; with `market`, reading the market table's
    columns too), loaded the way MLflow loads it, untrained."""
    import numpy as np
    import torch

    from data_loaders.market import MARKET_FEATURES
    from data_loaders.prices import feature_names
    from data_loaders.sequences import Normaliser
    from models.networks import build_model
    from models.price_model import PriceForecaster
    from models.served import write_artifacts

    torch.manual_seed(0)
    features = feature_names(True, scale_free) + (list(MARKET_FEATURES) if market else [])
    outputs = ["volatility_h5"] if scale_free else ["return_h1", "return_h2"]
    spec = {"task": "prices", "n_in": len(features),
            "model": {"cell": cell, "hidden": 8, "layers": layers, "dropout": 0.0,
                      "norm": "none", "init": "orthogonal", "lookback": lookback},
            "bptt": bptt, "lookback": lookback, "target": "volatility" if scale_free else
            "returns", "horizon": 5 if scale_free else 2, "features": features,
            "outputs": outputs, "loss": loss, "quantiles": list(quantiles),
            "scale_free": scale_free}
    spec["n_out"] = len(outputs) * {"mse": 1, "gaussian": 2, "quantile": len(quantiles)}[loss]
    net = build_model(spec["model"], len(features), spec["n_out"])
    norm = {"x": Normaliser(np.zeros(len(features)), np.ones(len(features))).to_dict(),
            "y": Normaliser(np.zeros(len(outputs)), np.ones(len(outputs))).to_dict()}
    return PriceForecaster().load(write_artifacts(folder, net, spec, norm))


@functools.cache
def bundled_market():
    """The market table of the four bundled tickers (1986-2018: the project's market.csv,
    of the universe, starts in 2000)."""
    from data_loaders.market import market_table
    from data_loaders.prices import read_prices

    return market_table(read_prices(PRICES)[0])
