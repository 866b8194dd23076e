"""Step `predict`: batch forecasts from a logged or registered model, without a server.

Reads: prices (`input`: a Yahoo-style CSV file, a folder of them, or a Parquet
file with an optional `series_id` column) and a model (`model_uri`:
`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/RUN_ID/model`).
Writes: `output` (CSV, or Parquet by its suffix), one row per forecast, written
to a temporary file and renamed into place, so a failure leaves no half file.
The rows are exactly what the REST endpoint returns for the same prices.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from data_loaders.prices import read_prices
from models.pyfunc import price_columns, request_row
from pipeline.config import PREDICT_DEFAULTS, PredictConfig
from pipeline.prepare import resolve
from pipeline.tracking import tracking_uri


def predict_prices(model, series: dict[str, pd.DataFrame], mode: str, rows_per_call: int = 64,
                   progress: bool | None = None) -> pd.DataFrame:
    """Forecasts for every series, sent to the pyfunc `rows_per_call` series at a time."""
    from tqdm.auto import tqdm

    columns = price_columns(model.unwrap_python_model().spec)
    rows = [request_row(frame, name, columns) for name, frame in series.items()]
    parts = []
    with tqdm(total=len(rows), desc="series", unit="series",
              disable=None if progress is None else not progress) as bar:
        for i in range(0, len(rows), rows_per_call):
            chunk = pd.DataFrame(rows[i:i + rows_per_call])
            parts.append(model.predict(chunk, params={"mode": mode}))
            bar.update(len(chunk))
    return pd.concat(parts, ignore_index=True)


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write next to `path` under a temporary name, then rename: readers see the old
    file or the whole new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in PREDICT_DEFAULTS.items():
        parser.add_argument(f"--{name}", default=default, help=f"default: {default!r}")
    cfg = PredictConfig(**vars(parser.parse_args(argv))).validate()
    mlflow.set_tracking_uri(tracking_uri())
    series, repairs = read_prices(resolve(cfg.input), cfg.repair)
    model = mlflow.pyfunc.load_model(cfg.model_uri)
    out = predict_prices(model, series, cfg.mode)
    write_atomic(out, Path(cfg.output))
    print(f"{len(out)} forecasts for {len(series)} series -> {cfg.output}"
          + (f" ({len(repairs)} repairs)" if repairs else ""))
    return out


if __name__ == "__main__":
    main()
