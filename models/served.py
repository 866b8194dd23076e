"""The one way this project stores and serves a model, whatever its task.

A model is plain files, no pickle: `weights.pt` (a state_dict, read with
weights_only=True), `model.json` (the spec: the network settings, `n_in`,
`n_out`, the task and what its preprocessing needs) and `normaliser.json`. The
class comes from code (a models-from-code entry file per task), the project's
packages travel as code_paths, and the serving pins come from pyproject.toml.
`ServedModel` is the base every task's pyfunc builds on: it loads those files and
turns a request into checked rows; bad input raises `bad(...)`, which MLflow's
server answers with HTTP 400.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from models.networks import build_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "data_loaders")  # shipped with the model as code_paths


def bad(message: str) -> MlflowException:
    """A request error: HTTP 400 from MLflow's scoring server, with this message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


MAX_ID = 256  # characters of a series_id or utterance_id


def missing(value) -> bool:
    """None, NaN, NaT or pandas' NA (a null in a nullable or Arrow column)."""
    return value is None or value is pd.NA or (np.isscalar(value) and pd.isna(value))


def cell(value):
    """A scalar cell as Python has it: MLflow hands the `inputs` and `instances` formats
    over with every value in an array of one."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def row_id(row: dict, column: str, i: int) -> str:
    """The id a row names itself by (its number when it sends none), checked."""
    value = cell(row.get(column))
    if missing(value):
        return str(i)
    if not isinstance(value, str):
        raise bad(f"row {i}, column '{column}': expected a string, got {type(value).__name__}")
    if len(value) > MAX_ID:
        raise bad(f"row {i}, column '{column}': {len(value)} characters; the limit is {MAX_ID}")
    return value


def numbers(values, where: str) -> np.ndarray:
    """A JSON list (or a tuple, or an array) of numbers as float64, or bad(...) naming
    `where` ("row 3, column 'close'") and the first value that is no number. True and false
    are none, though numpy reads them as 1.0 and 0.0 among numbers: their types are looked
    at only where a 0 or 1 is, not at each of up to millions of values."""
    arr = None
    if isinstance(values, list | tuple | np.ndarray):
        try:
            arr = np.asarray(values)  # text gives a text or object array, numbers a numeric one
        except (TypeError, ValueError):  # ragged
            pass
    if arr is None or arr.ndim != 1:
        raise bad(f"{where}: expected an array of numbers, got {type(values).__name__}")
    if isinstance(values, np.ndarray) and arr.dtype.kind in "US":  # one text value made
        # all of it text (MLflow's `instances`): which value it was is lost
        raise bad(f"{where}: expected numbers, got an array of text ({short(values[0].item())}, "
                  "...)")
    if arr.dtype.kind not in "fiu":  # text, bools, None, or whole numbers past int64
        _no_number_at(values, range(len(values)), where)
    try:
        out = arr.astype(np.float64, copy=False)
    except OverflowError:  # a whole number past float64 (JSON allows 10**400)
        k = next(k for k, v in enumerate(values) if not _fits_float(v))
        raise bad(f"{where}: position {k}: {short(values[k])} is too large for a number"
                  ) from None
    if isinstance(values, list | tuple):
        _no_number_at(values, np.flatnonzero((out == 0) | (out == 1)), where)
    return out


def _no_number_at(values, positions, where: str) -> None:
    k = next((int(k) for k in positions if isinstance(values[k], bool)
              or not isinstance(values[k], int | float | np.number)), None)
    if k is not None:
        raise bad(f"{where}: position {k}: expected a number, got {short(values[k])}")


def _fits_float(value) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def short(value) -> str:
    """A value for a message: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def no_state(states, mode: str) -> None:
    """Refuse a `state` (the values of that column, row by row) outside mode stream."""
    sent = next((i for i, v in enumerate(states) if not missing(cell(v))), None)
    if sent is not None:
        raise bad(f"row {sent}, column 'state': a state is read only with params mode "
                  f"'stream' (mode is {mode!r})")


def sent_id(row: dict, column: str) -> str:
    """The id a row sent in `column` ("" when it sent none): what a stream's state names."""
    value = cell(row.get(column))
    return value if isinstance(value, str) else ""


class ServedModel(mlflow.pyfunc.PythonModel):
    """Loads the stored files; `rows()` checks the batch. A subclass names its
    models-from-code `entry` file (in models/), its `signature(spec)` and its
    `serve(model_input, params)`, which `predict` calls; `unit` names a row in messages,
    `max_rows` bounds a request."""

    entry: str
    unit = "row"
    max_rows = 1_000
    # what one row may cost, for a batch scorer that cannot look inside the rows (Spark):
    # the array column whose length is a row's `size`, else the most one row may cost
    size_column: str | None = None
    most_per_row: float = 0.0
    id_column: str | None = None  # the column a row names itself by (row_id)
    needs: tuple = ()  # training-only packages it needs to serve too (librosa for audio)
    carried: tuple = ()  # input columns that carry a stream's state, not data

    def load_context(self, context) -> None:
        self.memory = MemoryKeeper()  # only a server (or a user) loading the model runs it
        self.load(context.artifacts)

    def load(self, artifacts: dict) -> ServedModel:
        self.spec = json.loads(Path(artifacts["config"]).read_text())
        self.normaliser = json.loads(Path(artifacts["normaliser"]).read_text())
        self.net = build_model(self.spec["model"], self.spec["n_in"], self.spec["n_out"])
        self.net.load_state_dict(torch.load(artifacts["weights"], map_location="cpu",
                                            weights_only=True))
        self.net.eval()
        # what a state token names its model by (models/stream.py): the run and the weights
        digest = hashlib.sha256(Path(artifacts["weights"]).read_bytes()).hexdigest()[:16]
        self.identity = f"{self.spec.get('run_id', '')}/{digest}"
        self.setup()
        return self

    def setup(self) -> None:
        """After loading: what a subclass derives from the spec and normaliser."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return self.serve(model_input, params or {})
        except MlflowException as err:
            raise self.named(err, model_input) from None
        finally:
            if memory := getattr(self, "memory", None):
                memory.request_done()

    def named(self, err: MlflowException, model_input) -> MlflowException:
        """A row's error with the row's own id after it (`... (series_id 'SPY')`), so a
        batch split by a scorer (Spark) still says which row failed; as it was when the
        row sends no valid id, or when the error is about the id."""
        found = re.match(r"row (\d+)[,:]", err.message)
        if not self.id_column or not found or f"column '{self.id_column}'" in err.message:
            return err
        try:
            value = cell(pd.DataFrame(model_input)[self.id_column].iloc[int(found[1])])
        except (KeyError, IndexError, ValueError, TypeError):
            return err
        if not isinstance(value, str) or len(value) > MAX_ID:
            return err
        return bad(f"{err.message} ({self.id_column} {value!r})")

    def size(self, row: dict) -> float:
        """What a row costs in the units of `budget` (a subclass with a budget says)."""
        return 0.0

    def budget(self) -> float:
        """The most that the rows of one request may cost together."""
        return float("inf")

    def rows(self, model_input) -> list[dict]:
        """The request as one dict per row, after the batch-level checks."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame) == 0:  # with no column: none sent, or MLflow dropped every one
            names = ", ".join(self.signature(self.spec).inputs.input_names())
            reads = "" if len(frame.columns) else (f" in the columns this model reads ({names})"
                                                   "; others are dropped, and the server's "
                                                   "log names them")
            raise bad(f"empty batch: send at least one row (one {self.unit}){reads}")
        if len(frame) > self.max_rows:
            raise bad(f"request has {len(frame):,} rows (one {self.unit} each); the limit is "
                      f"{self.max_rows:,} per request: split it across "
                      f"{-(-len(frame) // self.max_rows)} or more requests")
        columns = {c: frame[c].tolist() for c in frame.columns}  # cheaper than to_dict rows
        return [{c: v[i] for c, v in columns.items()} for i in range(len(frame))]


class MemoryKeeper:
    """Hands memory freed after a request back to the OS. pandas keeps strings (base64
    audio, dates, ids) in Arrow's memory pool, whose mimalloc keeps what is freed, so
    Arrow is switched to the system allocator; glibc keeps freed memory in its heaps
    (one per server thread), so a daemon thread calls malloc_trim while the server is
    quiet, for 30 s after the last request. Without both, the server stayed hundreds
    of MB above its idle size after a large request."""

    def __init__(self, seconds: float = 1.0, window: float = 30.0):
        import ctypes
        import ctypes.util
        import threading

        try:
            import pyarrow

            pyarrow.set_memory_pool(pyarrow.system_memory_pool())
        except ImportError:  # no pyarrow: pandas keeps strings as Python objects
            pass
        self.seconds, self.window, self.last = seconds, window, float("-inf")
        self.wake = None  # no thread: nothing to trim
        try:
            self.trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (musl, macOS)
            return
        self.wake = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="memory-keeper").start()

    def request_done(self) -> None:
        if self.wake is not None:
            self.last = time.monotonic()
            self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()  # a request ending from here on extends the loop
            while time.monotonic() - self.last < self.window:
                time.sleep(self.seconds)
                if time.monotonic() - self.last >= self.seconds:  # quiet: no request busy
                    self.trim(0)  # (under load, trimming would only cost page faults)


def write_artifacts(folder: Path, net: torch.nn.Module, spec: dict, normaliser: dict) -> dict:
    """The three files a model is made of; returns {artifact name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"weights": folder / "weights.pt", "config": folder / "model.json",
             "normaliser": folder / "normaliser.json"}
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, paths["weights"])
    paths["config"].write_text(json.dumps(spec, indent=2))
    paths["normaliser"].write_text(json.dumps(normaliser))
    return {k: str(v) for k, v in paths.items()}


def log_served(model_class: type[ServedModel], net: torch.nn.Module, spec: dict,
               normaliser: dict, example: pd.DataFrame):
    """Log the model into the active run; returns MLflow's ModelInfo. The model first
    predicts on the example here, since MLflow only warns when its own check fails."""
    if run := mlflow.active_run():
        spec = {**spec, "run_id": run.info.run_id}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = write_artifacts(Path(tmp), net, spec, normaliser)
        model_class().load(artifacts).predict(None, example)
        with warnings.catch_warnings():  # count columns are ints on purpose, never missing
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
            return mlflow.pyfunc.log_model(
                name="model", python_model=str(ROOT / "models" / model_class.entry),
                artifacts=artifacts, code_paths=[str(ROOT / p) for p in PACKAGES],
                signature=model_class.signature(spec), input_example=example,
                pip_requirements=requirements(model_class.needs))


TRAINING_ONLY = ("yfinance", "librosa", "matplotlib", "tqdm")


def requirements(needs: tuple = ()) -> list[str]:
    """The serving dependencies, pinned as in pyproject.toml."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if d.split("==")[0] not in set(TRAINING_ONLY) - set(needs)]
