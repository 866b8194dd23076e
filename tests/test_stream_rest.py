"""mode=stream over the real `mlflow models serve`: for every kind of price model, a
series streamed in pieces (random sizes, then single days) gets what one `rolling`
request over the whole series gets, and two replicas of one model continue each
other's series (the server keeps nothing)."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow_server import post, serving

from models.price_model import PriceForecaster
from models.served import log_served
from tests.conftest import ROOT, fresh_store, price_forecaster
from tests.test_serving import split_body
from tests.test_stream import KINDS, assert_same, piece, series

pytestmark = pytest.mark.slow


def predictions(url: str, rows: list[dict], **params) -> pd.DataFrame:
    status, text = post(url, split_body(pd.DataFrame(rows), **params))
    assert status == 200, text[-500:]
    return pd.DataFrame(json.loads(text)["predictions"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One logged model of each kind (random weights), in a store of their own."""
    tmp = tmp_path_factory.mktemp("stream-rest")
    example = pd.DataFrame([series(days=60)])
    with fresh_store(tmp):
        mlflow.set_experiment("stream")  # (not the experiment an earlier test left active)
        ids = {}
        for kind, settings in KINDS.items():
            model = price_forecaster(tmp / kind, **settings)
            with mlflow.start_run(run_name=kind) as run:
                log_served(PriceForecaster, model.net, model.spec, model.normaliser, example)
            ids[kind] = run.info.run_id
        yield tmp, ids


def stream_over(urls: list[str], row: dict, cuts: list[int]) -> pd.DataFrame:
    """`row` in pieces, the k-th piece sent to urls[k % len(urls)]."""
    state, parts = None, []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        out = predictions(urls[k % len(urls)], [piece(row, a, b) | {"state": state}],
                          mode="stream")
        state = out.state.iloc[-1]
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_streamed_pieces_over_rest_give_one_rolling_request(runs, kind):
    store, ids = runs
    row = series(days=1100)
    n, rng = len(row["close"]), np.random.default_rng(1)
    with serving(f"runs:/{ids[kind]}/model", store) as url:
        want = predictions(url, [row], mode="rolling")
        first = 60  # enough to start any of these models
        cuts = sorted(rng.choice(np.arange(first + 1, n - 4), 8, replace=False))
        got = stream_over([url], row, [0, first, *cuts, *range(n - 4, n + 1)])
    assert_same(got, want)


def test_two_replicas_continue_each_others_series(runs):
    store, ids = runs
    row = series(days=400)
    uri = f"runs:/{ids['gru-stateful-mse']}/model"
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(serving(uri, store)) for _ in range(2)]
        want = predictions(urls[0], [row], mode="rolling")
        got = stream_over(urls, row, [0, 100, 101, 250, 251, 252, 399, 400])
    assert_same(got, want)


def test_predict_streams_a_daily_job_with_its_states_in_a_table(runs, tmp_path):
    """Day 0 sends each series' history, then each day only that day's row: the
    predictions are the rolling ones, and the states table keeps one row per series."""
    from pipeline import predict

    store, ids = runs
    uri = f"runs:/{ids['lstm-stateful-scale-free-quantile']}/model"
    days = {k: tmp_path / f"day{k}" for k in range(4)}
    for name in ("SPY", "AAPL"):
        lines = (ROOT / "data" / "prices" / f"{name}.csv").read_text().splitlines()
        header, rows = lines[0], lines[-1200:]
        for k, folder in days.items():
            folder.mkdir(exist_ok=True)
            part = rows[:-3] if k == 0 else [rows[-4 + k]]
            (folder / f"{name}.csv").write_text("\n".join([header, *part]) + "\n")
        (tmp_path / "whole").mkdir(exist_ok=True)
        (tmp_path / "whole" / f"{name}.csv").write_text("\n".join([header, *rows]) + "\n")
    states = tmp_path / "states.parquet"
    with fresh_store(store):
        want = predict.main(["--model_uri", uri, "--input", str(tmp_path / "whole"),
                             "--output", str(tmp_path / "rolling.csv"), "--mode", "rolling"])
        got = [predict.main(["--model_uri", uri, "--input", str(folder), "--mode", "stream",
                             "--output", str(tmp_path / f"p{k}.parquet"),
                             "--states", str(states)]) for k, folder in days.items()]
        assert len(pd.read_parquet(states)) == 2
        assert got[1].series_id.tolist() == ["AAPL", "SPY"]
    got = pd.concat(got, ignore_index=True)
    for name in ("SPY", "AAPL"):
        mine = got[got.series_id == name].reset_index(drop=True)
        assert_same(mine.drop(columns="state"), want[want.series_id == name].reset_index(drop=True))
    table = pd.read_parquet(states).set_index("series_id").state
    last = got.groupby("series_id").state.last()
    assert table.to_dict() == last.to_dict()


def readme_block(after: str) -> str:
    """The first bash block of README.md after the line that starts with `after`."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```bash\n", text.index(f"\n{after}")) + len("```bash\n")
    return text[start:text.index("\n```", start)]


def test_the_readme_daily_loop_runs_as_written(runs, tmp_path):
    store, ids = runs
    (tmp_path / "data").symlink_to(ROOT / "data")
    uri = f"runs:/{ids['gru-stateful-mse']}/model"
    with serving(uri, store) as url:
        script = readme_block("**Stream**").replace("127.0.0.1:5001", url.split("//")[1])
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        want = predictions(url, [series(days=100_000)], mode="last")
    got = json.loads(done.stdout)["predictions"]
    assert len(got) == 1 and got[0]["state"] and got[0]["date"] == want.date.iloc[-1]
    assert got[0]["step"] == want.step.iloc[-1]
    assert np.isclose(got[0]["return_h1"], want.return_h1.iloc[-1], rtol=1e-5)
