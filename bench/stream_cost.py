"""What a daily forecast costs with and without a state token (mode=stream).

For series whose history is 10^2, 10^4 and 10^6 days (one long real history,
bench.common.long_history): the time of a one-step `stream` request (today's prices and
yesterday's state) against a `last` request over the whole history, and the token's
size. In process (the model's own predict, one torch thread): what a server spends on
the request, without HTTP. Medians of 30 stream calls and of 3 `last` calls, the two
alternated. Two models of the demo's kind (volatility-tbptt, stateful GRU, one epoch:
speed does not depend on the weights): as it is, and scale-free (its token carries the
1,000 days its features read back).
Target: a one-step stream request at 10^6 days costs <= 1.5x one at 10^2 days.

    python -m bench.stream_cost
"""

from __future__ import annotations

import statistics
import tempfile
import time

import mlflow
import pandas as pd
import torch

from bench.common import long_history, pin_allocator, registered_model, result
from models.price_model import request_row

COLUMNS = ["close", "high", "low", "volume"]
HISTORIES = (100, 10_000, 1_000_000)


def state_after(own, row: dict, steps: int) -> str:
    """The token after streaming the first `steps` prices, in pieces within the limits."""
    per, state = own.limits()["rolling forecasts"], None
    for a in range(0, steps, per):
        piece = {k: v[a:min(a + per, steps)] if isinstance(v, list) else v
                 for k, v in row.items()} | {"state": state}
        state = own.predict(None, pd.DataFrame([piece]), {"mode": "stream"}).state.iloc[-1]
    return state


def median_ms(call, times: int) -> float:
    ms = []
    for _ in range(times):
        t0 = time.perf_counter()
        call()
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms)


def measure(own, frame: pd.DataFrame, steps: int) -> dict:
    row = request_row(frame.iloc[:steps], "X", COLUMNS)  # `steps` days, today the last
    row.pop("dates", None)  # beyond pandas' calendar the long history has none
    state = state_after(own, row, steps - 1)
    today = pd.DataFrame([{k: v[steps - 1:] if isinstance(v, list) else v
                           for k, v in row.items()} | {"state": state}])
    whole = pd.DataFrame([row])
    stream_ms, last_ms = [], []
    for _ in range(3):  # alternated: 10 stream calls, then one last call
        stream_ms.append(median_ms(lambda: own.predict(None, today, {"mode": "stream"}), 10))
        last_ms.append(median_ms(lambda: own.predict(None, whole, {"mode": "last"}), 1))
    return {"history": steps, "stream_ms": statistics.median(stream_ms),
            "last_ms": statistics.median(last_ms), "token_chars": len(state)}


def main() -> None:
    pin_allocator()
    torch.set_num_threads(1)
    frame = long_history(max(HISTORIES))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("demo", {}), ("scale-free", {"scale_free": "true"})):
            uri = registered_model(f"{tmp}/{name}", preset="volatility-tbptt",
                                   registered_model=f"bench-{name}", **extra)
            own = mlflow.pyfunc.load_model(uri).unwrap_python_model()
            rows = [measure(own, frame, n) for n in HISTORIES]
            print(f"\n{name} model ({uri}):")
            print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
            ratios.append(rows[-1]["stream_ms"] / rows[0]["stream_ms"])
            print(f"one-step stream at 10^6 days / at 10^2 days: {ratios[-1]:.2f}; last at "
                  f"10^6 / stream at 10^6: {rows[-1]['last_ms'] / rows[-1]['stream_ms']:.0f}x")
    result("stream_10e6_over_10e2", max(ratios), "<=", 1.5)


if __name__ == "__main__":
    main()
