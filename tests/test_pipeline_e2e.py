"""End to end on real prices: one run per model, the registry, the pyfunc, `mlflow run`.

Every test has its own SQLite store and artifact folder under tmp_path.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import pipeline
from data_loaders.sequences import TEST
from models.networks import forecast_at
from models.price_model import request_row
from pipeline import evaluate, prepare, register, tasks
from pipeline.core import tracking
from pipeline.core.config import build_config
from pipeline.main import main
from tests.conftest import PRICES, ROOT, SPY, launch_env, mlflow_run

FAST = ["--data", SPY, "--epochs", "2", "--hidden", "8", "--lookback", "16", "--lanes", "4",
        "--k1", "20", "--k2", "40"]
pytestmark = pytest.mark.slow  # every test here trains real models


def test_tracking_defaults_to_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_both_launchers_from_one_directory_use_one_store(tmp_path):
    """With MLFLOW_TRACKING_URI unset, `python -m` and `mlflow run` started in the same
    directory (not the project's) log to the same mlflow.db there."""
    env = {k: v for k, v in launch_env("").items() if k != "MLFLOW_TRACKING_URI"}
    for cmd in ([sys.executable, "-m", "pipeline.prepare", "--data", SPY],
                [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "prepare",
                 "--env-manager", "local", "-P", f"data={SPY}"]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    # without --experiment-name, mlflow run files the run under Default, and it says so
    assert "note: mlflow run put this prices run in the experiment 'Default'; pass " \
           "--experiment-name prices" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {e.name: len(client.search_runs([e.experiment_id]))
            for e in client.search_experiments()}
    assert runs == {"prices": 1, "Default": 1}


def test_main_logs_one_complete_run_and_registers_it(store):
    out = main(FAST)
    client = MlflowClient()
    run = client.get_run(out["run_id"])
    cfg = build_config({k[2:]: v for k, v in zip(FAST[::2], FAST[1::2], strict=True)})
    assert run.data.params == cfg.params()  # exactly the resolved config, nothing else
    assert run.data.tags["val_start"] and run.data.tags["series"] == "SPY"
    assert run.data.tags["workdir"] == str(store)
    assert run.data.tags["seqpredict_version"] == pipeline.__version__
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    for name in ("train_loss", "grad_norm", "lr", "epoch_seconds"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2
    m = run.data.metrics
    for metric in ("rmse", "mae", "dir_acc", "r2_oos"):
        for suffix in ("", "_zero", "_persistence", "_train_mean"):
            assert np.isfinite(m[f"test_{metric}{suffix}"])
    assert 0 <= m["test_dm_pvalue"] <= 1
    assert m["test_r2_oos_zero"] == pytest.approx(0.0)
    assert run.inputs.dataset_inputs[0].dataset.name == "prices"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/loss_curves.png", "plots/test_forecast.png",
                         "plots/memory_horizon.png"}
    assert 0 <= m["memory_horizon"] <= 15  # lookback 16: k = 0..15
    champion = client.get_model_version_by_alias("prices-returns-h1", "champion")
    assert champion.run_id == run.info.run_id
    assert float(champion.tags["best_val_loss"]) == pytest.approx(m["best_val_loss"])
    assert champion.tags["champion_check"] == "the first version"
    assert "test_rmse" in champion.tags


def _history_rows(prep, name, anchor):
    """The raw request for a forecast at `anchor`: prices up to the day it is known."""
    return request_row(prep.frames[name].iloc[: anchor + 2], name,
                       ["close", "high", "low", "volume"])


VOLATILITY = ["--bptt", "truncated", "--cell", "gru", "--target", "volatility", "--horizon", "3"]


@pytest.mark.parametrize("extra", [[], VOLATILITY, [*VOLATILITY, "--scale_free", "true"]])
def test_pyfunc_predicts_from_price_histories_like_evaluation(store, extra):
    """The served model computes what evaluation does from the prices alone; a scale-free
    model's trailing volatility too (from the history sent, here all of it)."""
    out = main([*FAST, "--data", str(PRICES), "--start", "2010-01-01", *extra])
    cfg = tracking.run_config(out["run_id"])
    prep = tasks.load("prices").prepare(cfg)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model}@champion")
    net = model.unwrap_python_model().net
    rows, expected = [], []
    streams = prep.streams()
    for i, name in enumerate(prep.names[:2]):
        a = streams.anchors(TEST, cfg.task.lookback)[i][[0, -1]]
        for anchor in a:
            x = streams.x[i][: anchor + 1]  # the model only ever sees the past
            pred = forecast_at(net, x, np.array([anchor]), cfg.train.bptt == "truncated",
                               cfg.task.lookback)
            expected.append(prep.y_norm.inverse_transform(pred.numpy())[0]
                            * prep.scale[i][anchor])
            rows.append(_history_rows(prep, name, anchor))
    got = model.predict(pd.DataFrame(rows))
    outputs = model.unwrap_python_model().spec["outputs"]
    assert list(got.columns) == ["series_id", "step", "date", *outputs]
    assert got.series_id.tolist() == [r["series_id"] for r in rows]
    assert got.date.tolist() == [r["dates"][-1] for r in rows]
    assert np.allclose(got[outputs].to_numpy(), np.array(expected), rtol=1e-4, atol=1e-7)


def test_pyfunc_rejects_bad_histories_by_name(store):
    main(FAST)
    model = mlflow.pyfunc.load_model("models:/prices-returns-h1@champion")
    good = {"close": [100.0 + i for i in range(30)], "high": [102.0 + i for i in range(30)],
            "low": [99.0 + i for i in range(30)], "volume": [1e6] * 30}
    cases = {
        "shorter than the 17 this model needs": {**good, "close": good["close"][:10],
                                                 "high": good["high"][:10],
                                                 "low": good["low"][:10],
                                                 "volume": good["volume"][:10]},
        "column 'close': NaN or infinity at position 0": {
            **good, "close": [np.nan] + good["close"][1:]},
        "column 'low': must be > 0, got 0.0 at position 0": {
            **good, "low": [0.0] + good["low"][1:]},
        "missing required column 'volume'": {k: v for k, v in good.items() if k != "volume"},
    }
    for message, row in cases.items():
        with pytest.raises(mlflow.exceptions.MlflowException, match=message):
            model.unwrap_python_model().predict(None, pd.DataFrame([row]))
    with pytest.raises(mlflow.exceptions.MlflowException, match="empty batch"):
        model.unwrap_python_model().predict(None, pd.DataFrame(columns=list(good)))


def test_steps_on_their_own(store, capsys):
    prepare.main(["--data", SPY])
    assert "SPY" in capsys.readouterr().out
    from pipeline import train

    train.main([*FAST, "--experiment", "steps"])
    run = mlflow.search_runs(experiment_names=["steps"], output_format="list")[0]
    assert "test_rmse" not in run.data.metrics and "best_val_loss" in run.data.metrics
    evaluate.main(["--run_id", run.info.run_id])
    assert "test_rmse" in MlflowClient().get_run(run.info.run_id).data.metrics
    register.main(["--run_id", run.info.run_id])
    assert MlflowClient().get_model_version_by_alias("prices-returns-h1", "champion")


def test_mlflow_run_truncated_gru_on_a_csv_folder(store):
    data = store / "csvs"
    data.mkdir()
    for name in ("AAPL", "GSPC"):
        shutil.copy(PRICES / f"{name}.csv", data)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    proc = mlflow_run("main", {"cell": "gru", "bptt": "truncated", "k1": 50, "k2": 100,
                               "epochs": 1, "data": data, "hidden": 8}, store, uri, "cli")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = mlflow.search_runs(experiment_names=["cli"], output_format="list")[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["k2"] == "100" and run.data.tags["series"] == "AAPL,GSPC"
    assert run.data.params["experiment"] == "cli"
    assert "test_rmse" in run.data.metrics
    champion = MlflowClient().get_model_version_by_alias("prices-returns-h1", "champion")
    assert champion.run_id == run.info.run_id
    assert str(store) in run.info.artifact_uri  # nothing written into the project folder
    out = store / "pred.parquet"
    proc = mlflow_run("predict", {"input": data, "output": out, "mode": "rolling"}, store, uri,
                      "cli")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = pd.read_parquet(out)
    assert set(pred.series_id) == {"AAPL", "GSPC"} and np.isfinite(pred.return_h1).all()
    assert len(pred) == 3379 + 5031 - 2 * 64


def _cached(cache: Path, names=("SPY", "AAPL")) -> None:
    """A filled yfinance cache, as download_prices writes it (Yahoo's columns)."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        frame = pd.read_csv(PRICES / f"{name}.csv").tail(400)
        frame.to_csv(cache / f"{name}_1d.csv", index=False)


def test_tickers_from_a_filled_cache_run_the_whole_main_step(store, monkeypatch):
    import yfinance

    def offline(*args, **kwargs):
        raise AssertionError("yfinance must not be asked for cached tickers")

    monkeypatch.setattr(yfinance, "download", offline)
    _cached(store / "cache")
    out = main(["--tickers", "SPY,AAPL", "--cache_dir", "cache", "--epochs", "1",
                "--hidden", "4", "--lookback", "8"])
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.params["tickers"] == "SPY,AAPL" and run.data.tags["series"] == "AAPL,SPY"
    assert run.data.tags["data_origin"] == "yfinance:SPY,AAPL:1d"
    source = mlflow.data.get_source(run.inputs.dataset_inputs[0])  # MLflow can resolve it
    assert Path(source.uri) == store / "cache"
    assert "test_rmse" in run.data.metrics
    assert MlflowClient().get_model_version_by_alias("prices-returns-h1", "champion").run_id \
        == out["run_id"]


def test_unknown_ticker_offline_fails_with_a_clear_message(store, monkeypatch):
    import yfinance

    monkeypatch.setattr(yfinance, "download", lambda *a, **k: pd.DataFrame())
    with pytest.raises(ValueError, match="no data for 'ZZZZ'.*data=PATH"):
        main(["--tickers", "ZZZZ", "--cache_dir", str(store / "cache")])


def test_numerical_fault_fails_the_run_and_leaves_the_registry_alone(store):
    from pipeline.core.trainer import NumericalFault

    good = main(FAST)["run_id"]
    with pytest.raises(NumericalFault, match="of epoch 0. Likely cause: clipping is off"):
        main([*FAST, "--optimizer", "sgd", "--momentum", "0", "--lr", "10", "--clip", "0"])
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["prices"], output_format="list")
    failed = [r for r in runs if r.info.run_id != good]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert len(client.search_model_versions("name='prices-returns-h1'")) == 1
    assert client.get_model_version_by_alias("prices-returns-h1", "champion").run_id == good


def test_warm_start_copies_the_weights_or_says_what_differs(store):
    import torch

    from models.networks import build_model
    from pipeline.core.tracking import load_initial_weights

    main(FAST)
    uri = "models:/prices-returns-h1@champion"
    champion = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    net = build_model(champion.spec["model"], 3, 1)
    load_initial_weights(net, uri)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 champion.net.state_dict().values(), strict=True))
    wider = build_model({**champion.spec["model"], "hidden": 16}, 3, 1)
    with pytest.raises(ValueError, match=r"does not fit this network; cells.0.weight_ih_l0: "
                                         r"\[32, 3\] there, \[64, 3\] here"):
        load_initial_weights(wider, uri)
    run_id = main([*FAST, "--init_from", uri, "--epochs", "1"])["run_id"]
    assert MlflowClient().get_run(run_id).data.params["init_from"] == uri
    with pytest.raises(ValueError, match="does not fit this network"):
        main([*FAST, "--hidden", "16", "--init_from", uri])
    with pytest.raises(ValueError, match="init_from: cannot load models:/nothing@champion"):
        main([*FAST, "--init_from", "models:/nothing@champion"])


def test_sigterm_ends_the_run_killed_and_says_how_to_resume(store, monkeypatch, capsys):
    import signal

    from pipeline.core.signals import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted(signal.SIGTERM, store / "latest.pt")

    monkeypatch.setattr("pipeline.core.trainer.fit", stopped)
    with pytest.raises(SystemExit) as exit_:
        main(FAST)
    assert exit_.value.code == 128 + signal.SIGTERM
    run = mlflow.search_runs(experiment_names=["prices"], output_format="list")[0]
    assert run.info.status == "KILLED"
    assert run.data.tags["checkpoint_dir"] == str(store / "checkpoints" / run.info.run_id)
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and f"-P resume_run_id={run.info.run_id}" in err
    with pytest.raises(ValueError, match="resume_run_id: no run 'nope'"):
        main(["--resume_run_id", "nope"])


def test_a_quantile_model_of_returns_logs_its_value_at_risk_backtests(store):
    out = main([*FAST, "--loss", "quantile", "--quantiles", "0.01,0.05,0.5,0.95,0.99"])
    m = MlflowClient().get_run(out["run_id"]).data.metrics
    for method in ("", "_garch", "_historical"):  # the model, then the baselines
        for name in ("pinball", "coverage_90", "width_90", "coverage_98", "var1_rate",
                     "var5_rate"):
            assert np.isfinite(m[f"test_{name}{method}"]), name + method
        for name in ("var1_kupiec_p", "var5_kupiec_p", "var1_christoffersen_p",
                     "var5_christoffersen_p"):
            assert 0 <= m[f"test_{name}{method}"] <= 1
    assert 0 <= m["test_dm_pvalue_garch"] <= 1 and "test_qlike" not in m
    served = mlflow.pyfunc.load_model(f"runs:/{out['run_id']}/model")
    assert "return_h1_q5" in [c.name for c in served.metadata.get_output_schema().inputs]
    assert MlflowClient().get_registered_model("prices-returns-h1-quantile")


def sigterm_during(monkeypatch, target: str) -> int:
    """`main` as the command runs it (cli.run), SIGTERM sent to this process when
    `target` is called; the exit code."""
    import os
    import signal

    from pipeline.core import cli

    monkeypatch.setattr(target, lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, FAST)
    return exit_.value.code


def test_sigterm_after_training_ends_the_run_killed_not_running(store, monkeypatch, capsys):
    """Python's default would end the process with its run left RUNNING (torchrun sends
    SIGTERM to every rank when one fails, whatever they are doing)."""
    import signal

    # SIGTERM arrives while the test split is evaluated
    assert sigterm_during(monkeypatch, "pipeline.evaluate.evaluate_and_log") == \
        128 + signal.SIGTERM
    run = mlflow.search_runs(experiment_names=["prices"], output_format="list")[0]
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the run
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_one_walk_forward_block_alone_is_not_registered(store, capsys):
    main([*FAST, "--target", "volatility", "--folds", "5", "--fold", "5"])
    assert "a cross-validation fold's model is not registered" in capsys.readouterr().out
    assert not MlflowClient().search_registered_models()


def test_sigterm_while_registering_lets_go_of_the_lock(store, monkeypatch, capsys):
    """Registration comes after the run has ended; a lock left behind would make every
    later registration of the name wait for it to go stale (10 minutes)."""
    import signal

    # SIGTERM arrives while the lock is held
    assert sigterm_during(monkeypatch, "pipeline.core.registry.champion_version") == \
        128 + signal.SIGTERM
    assert "the step stopped by SIGTERM" in capsys.readouterr().err
    assert not MlflowClient().search_registered_models()  # neither a version nor the lock
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
