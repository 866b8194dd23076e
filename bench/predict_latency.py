"""In-process `predict` latency for one series: one row of 65 prices (lookback 64,
LSTM hidden 32), mode last, one torch thread; median of 500 calls after 50
warm-up calls, alternating two ways of calling the same loaded model:
- `model.unwrap_python_model().predict(None, frame)`: the model's own predict
  (its input validation included), the in-process call for low latency;
- `model.predict(frame)`: through MLflow's pyfunc wrapper, which first enforces
  the signature's schema on the frame (about 1 ms of pandas work in MLflow 3.17).

    python -m bench.predict_latency

Result: the median of the model's own predict, in ms (target <= 1.5).
"""

from __future__ import annotations

import statistics
import tempfile
import time

import pandas as pd
import torch

from bench.common import long_history, pin_allocator, registered_model, result
from models.price_model import request_row


def main() -> None:
    pin_allocator()
    torch.set_num_threads(1)
    import mlflow

    model = mlflow.pyfunc.load_model(registered_model(tempfile.mkdtemp(prefix="bench-lat-")))
    own = model.unwrap_python_model()
    history = long_history(2_000)
    frames = [pd.DataFrame([request_row(history.iloc[i:i + 65], "one",
                                        ["close", "high", "low", "volume"])])
              for i in range(0, 1100, 2)]
    times = {"own": [], "pyfunc": []}
    for i, frame in enumerate(frames):
        for name, call in (("own", lambda f=frame: own.predict(None, f)),
                           ("pyfunc", lambda f=frame: model.predict(f))):
            t0 = time.perf_counter()
            call()
            if i >= 50:
                times[name].append((time.perf_counter() - t0) * 1e3)
    for name, label in (("own", "model's own predict"), ("pyfunc", "through mlflow.pyfunc")):
        ts = sorted(times[name])
        print(f"{label:22s} {len(ts)} calls: median {statistics.median(ts):.3f} ms, "
              f"p90 {ts[int(0.9 * len(ts))]:.3f} ms")
    result("predict_latency_ms", statistics.median(times["own"]), "<=", 1.5)


if __name__ == "__main__":
    main()
