"""Rolling forecasts over long histories: time and memory as the history grows.

One series of 10^4, 10^5 and 10^6 prices (long_history: real daily moves), mode
rolling (a forecast at every price with a full lookback), through the served model's
`forecast` (its predict less the per-request limits: a request may ask for at most
250,000 rolling forecasts of a one-column model), for two served models: windowed full
BPTT (LSTM hidden 32, lookback 64: each forecast reads its 64-step window) and stateful
truncated BPTT (the volatility-tbptt preset, GRU hidden 32: one pass over the history).
Two torch threads.
Each size runs in a fresh process, which reports forecasts per second and the peak
rise of its resident memory during the call (sampled every 5 ms) over what it held
before.

    python -m bench.rolling_forecasts

Result: time per forecast at 10^6 prices over that at 10^4 (linear time: about 1),
for the windowed model; the memory figures show what stays flat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import pin_allocator, registered_model, result
from pipeline.core.params import ROOT

SIZES = (10_000, 100_000, 1_000_000)
MODELS = {"windowed": {}, "stateful": {"preset": "volatility-tbptt"}}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def one_size(uri: str, n: int) -> dict:
    """Runs in its own process: one rolling predict over n prices."""
    import mlflow
    import pandas as pd
    import torch

    from bench.common import long_history
    from models.price_model import request_row

    torch.set_num_threads(2)
    own = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    frame = pd.DataFrame([request_row(long_history(n), "one", ["close", "high", "low",
                                                               "volume"])])
    own.predict(None, frame.assign(**{c: [frame[c][0][:200]] for c in frame.columns
                                      if c != "series_id"}), {"mode": "rolling"})  # warm-up
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:  # forecast(): predict() without the per-request limits, which 10^6 exceeds
        out = own.forecast(own.rows(frame), "rolling")
    finally:
        seconds = time.perf_counter() - t0
        done.set()
    sampler.join()
    return {"forecasts": len(out), "seconds": seconds, "peak_rise_mib": peak[0] - before,
            "output_mib": out.memory_usage(deep=False).sum() / 2**20}


def main() -> None:
    if len(sys.argv) == 3:  # a child: one size
        print(json.dumps(one_size(sys.argv[1], int(sys.argv[2]))))
        return
    pin_allocator()
    tmp = tempfile.mkdtemp(prefix="bench-roll-")
    per_forecast = {}
    for kind, overrides in MODELS.items():
        uri = registered_model(os.path.join(tmp, kind), registered_model=f"bench-{kind}",
                               **overrides)
        for n in SIZES:
            child = subprocess.run([sys.executable, "-m", "bench.rolling_forecasts", uri,
                                    str(n)], capture_output=True, text=True, check=True,
                                   env=os.environ | {"PYTHONPATH": str(ROOT)})
            r = json.loads(child.stdout.strip().splitlines()[-1])
            per_forecast[kind, n] = r["seconds"] / r["forecasts"]
            print(f"{kind:8s} {n:>9,} prices: {r['forecasts']:>9,} forecasts in "
                  f"{r['seconds']:6.2f} s ({r['forecasts'] / r['seconds']:>9,.0f}/s), "
                  f"peak memory +{r['peak_rise_mib']:.0f} MiB (of which the output "
                  f"table {r['output_mib']:.0f} MiB)", flush=True)
    for kind in MODELS:
        print(f"{kind}: time per forecast at 10^6 / at 10^4 prices: "
              f"{per_forecast[kind, SIZES[-1]] / per_forecast[kind, SIZES[0]]:.3f}")
    result("rolling_time_per_forecast_ratio_1e6_vs_1e4",
           per_forecast["windowed", SIZES[-1]] / per_forecast["windowed", SIZES[0]], "<=", 1.25)


if __name__ == "__main__":
    main()
