"""In-process `predict` latency, two ways of calling the same loaded model:
- `model.unwrap_python_model().predict(None, frame)`: the model's own predict
  (its input validation included), the in-process call for low latency;
- `model.predict(frame)`: through MLflow's pyfunc wrapper (its schema check included).

1. One series: one row of 65 prices (lookback 64, LSTM hidden 32), mode last, one
   torch thread; median of 500 calls after 50 warm-up calls, the two ways alternated.
   Target: the model's own predict <= 1.5 ms.
2. A batch: 100 series of 500 prices each (windows of one real history), mode last,
   two torch threads; median of 50 calls after 5 warm-up calls, alternated with a bare
   batched forward from the same prices (every series' features from its prices,
   normalised, its last window, then one forward of the network over all 100 windows,
   no checks). Targets: own <= 1.5x bare, through mlflow.pyfunc <= 2.5x bare. Also
   printed: the model's own predict on the same series without their dates.

    python -m bench.predict_latency
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from bench.common import long_history, pin_allocator, registered_model, result
from models.price_model import request_row

COLUMNS = ["close", "high", "low", "volume"]


def medians(calls: dict, frames: list, warmup: int) -> dict[str, float]:
    """Median ms of each call over the frames, the calls alternated frame by frame."""
    times = {name: [] for name in calls}
    for i, frame in enumerate(frames):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call(frame)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bare_forward(own, frame: pd.DataFrame) -> np.ndarray:
    """The least a batched forecaster does: features, normalisation, one forward."""
    from data_loaders.prices import price_features

    lookback = own.spec["lookback"]
    wins = [own.x_norm.transform(price_features(
        {"adj_close": np.asarray(c), "high": np.asarray(h), "low": np.asarray(lo),
         "volume": np.asarray(v)}, True)[-lookback:])
        for c, h, lo, v in zip(frame.close, frame.high, frame.low, frame.volume, strict=True)]
    with torch.no_grad():
        out = own.net(torch.as_tensor(np.stack(wins)))[0][:, -1]
    return own.y_norm.inverse_transform(out.numpy())


def main() -> None:
    pin_allocator()
    import mlflow

    model = mlflow.pyfunc.load_model(registered_model(tempfile.mkdtemp(prefix="bench-lat-")))
    own = model.unwrap_python_model()
    history = long_history(3_000)

    torch.set_num_threads(1)
    ones = [pd.DataFrame([request_row(history.iloc[i:i + 65], "one", COLUMNS)])
            for i in range(0, 1100, 2)]
    one = medians({"own": lambda f: own.predict(None, f), "pyfunc": model.predict}, ones, 50)
    print(f"one series, 1 thread, {len(ones) - 50} calls: model's own predict "
          f"{one['own']:.3f} ms, through mlflow.pyfunc {one['pyfunc']:.3f} ms (medians)")

    torch.set_num_threads(2)
    batches = [pd.DataFrame([request_row(history.iloc[s + 20 * i:s + 20 * i + 500], f"s{i}",
                                         COLUMNS) for i in range(100)])
               for s in range(0, 550, 10)]
    got = own.predict(None, batches[0])[own.spec["outputs"]].to_numpy()
    if not np.allclose(got, bare_forward(own, batches[0]), rtol=1e-4, atol=1e-6):
        raise SystemExit("the bare forward does not give the model's forecasts")
    undated = [f.drop(columns="dates") for f in batches]
    many = medians({"bare": lambda f: bare_forward(own, f[0]),
                    "own": lambda f: own.predict(None, f[0]),
                    "pyfunc": lambda f: model.predict(f[0]),
                    "undated": lambda f: own.predict(None, f[1])},
                   list(zip(batches, undated, strict=True)), 5)
    print(f"100 series of 500 prices, 2 threads, {len(batches) - 5} calls: bare batched "
          f"forward {many['bare']:.1f} ms, model's own predict {many['own']:.1f} ms "
          f"(x{many['own'] / many['bare']:.2f}), through mlflow.pyfunc {many['pyfunc']:.1f} ms "
          f"(x{many['pyfunc'] / many['bare']:.2f}) (medians); the model's own predict without "
          f"the dates column (50,000 ISO dates to check) {many['undated']:.1f} ms "
          f"(x{many['undated'] / many['bare']:.2f})")
    result("predict_batch_own_vs_bare_ratio", many["own"] / many["bare"], "<=", 1.5)
    result("predict_batch_pyfunc_vs_bare_ratio", many["pyfunc"] / many["bare"], "<=", 2.5)
    result("predict_latency_ms", one["own"], "<=", 1.5)


if __name__ == "__main__":
    main()
