"""REST against in-process prediction for the same 10,000 rolling forecasts.

    python -m bench.rest_vs_inprocess

Starts `mlflow models serve` on 127.0.0.1 (OMP_NUM_THREADS=1) for a freshly
registered LSTM (lookback 64, hidden 32), then times one rolling-mode request
over a 10,064-price history (10,000 forecasts) against `model.predict` on the
same frame in this process (one torch thread), alternating 5 times; then the
latency of 200 single-series requests (65 prices each, mode last). Sending
prices, not windows, keeps the request 64 times smaller than the windows it
stands for. Result: median REST / in-process wall time (target <= 2.0).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pandas as pd
import torch

from bench.common import long_history, pin_allocator, registered_model, result
from models.price_model import request_row

LOOKBACK, FORECASTS = 64, 10_000


def serve(uri: str, tmp: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow models serve did not answer /ping within 120 s")


def post(url: str, frame: pd.DataFrame, mode: str) -> list:
    body = {"dataframe_split": frame.to_dict(orient="split", index=False),
            "params": {"mode": mode}}
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["predictions"]


def main() -> None:
    pin_allocator()
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    uri = registered_model(tmp, lookback=LOOKBACK)
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    history = long_history(FORECASTS + LOOKBACK)
    frame = pd.DataFrame([request_row(history, "long", ["close", "high", "low", "volume"])])
    proc, url = serve(uri, tmp)
    try:
        ratios = []
        for i in range(5):
            t0 = time.perf_counter()
            local = model.predict(frame, params={"mode": "rolling"})
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            remote = post(url, frame, "rolling")
            t_rest = time.perf_counter() - t0
            assert len(remote) == len(local) == FORECASTS
            assert np.allclose([r["return_h1"] for r in remote], local.return_h1, rtol=1e-5)
            ratios.append(t_rest / t_local)
            print(f"round {i}: {FORECASTS} rolling forecasts, in-process {t_local * 1e3:.0f} ms, "
                  f"REST {t_rest * 1e3:.0f} ms, ratio {ratios[-1]:.2f}")
        latencies = []
        for i in range(200):
            one = pd.DataFrame([request_row(history.iloc[i * 40: i * 40 + LOOKBACK + 1],
                                            f"s{i}", ["close", "high", "low", "volume"])])
            t0 = time.perf_counter()
            post(url, one, "last")
            latencies.append((time.perf_counter() - t0) * 1e3)
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"200 single-series requests ({LOOKBACK + 1} prices, mode last): "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result("rest_vs_inprocess_time_ratio", statistics.median(ratios), "<=", 2.0)


if __name__ == "__main__":
    main()
