"""The sweep entry point: the grid, child runs under a parent, the comparison, and the
MLflow UI listing them in a real headless browser (Debian chromium + chromedriver,
installed by `make browser`, which `make test` runs)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.core.children import parse_grid, points
from pipeline.core.config import build_config
from pipeline.sweep import run_sweep
from tests.conftest import SPY
from tests.mlflow_server import tracking_server

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots, kept after the run (git-ignored)
GRID = "cell=rnn,gru; bptt=full,truncated; k2=20,40"
BASE = ["-P", f"data={SPY}", "-P", "epochs=2", "-P", "hidden=8",
        "-P", "lookback=16", "-P", "k1=20", "-P", "lanes=4"]


def test_grid_parsing_and_errors():
    base = build_config()
    assert parse_grid(" cell=rnn, gru ;bptt=full", base) == {"cell": ["rnn", "gru"],
                                                             "bptt": ["full"]}
    for bad, why in [("cells=rnn", "unknown parameter 'cells'; closest: cell"),
                     ("cell", "NAME=V1,V2"), ("shift=1,2", "parameter of task speech-forecast"),
                     ("cell=", "needs values"), ("cell=rnn; cell=gru", "cell is given twice"),
                     ("", "no parameters"), ("resume_run_id=x", "cannot vary"),
                     ("task=prices,speech-classify", "cannot vary")]:
        with pytest.raises(ValueError, match=why):
            parse_grid(bad, base)
    speech = build_config({"task": "speech-forecast"})
    assert parse_grid("shift=1,2", speech) == {"shift": ["1", "2"]}


def test_points_skip_truncated_settings_for_full_bptt_and_check_every_config():
    todo = points(build_config({"k1": 20}), GRID)
    names = [name for name, _, _ in todo]
    assert names == ["rnn-full", "rnn-truncated-k2=20", "rnn-truncated-k2=40",
                     "gru-full", "gru-truncated-k2=20", "gru-truncated-k2=40"]
    assert all(not cfg.tracking.register for _, _, cfg in todo)
    assert todo[2][2].train.k2 == 40 and todo[2][1] == {"cell": "rnn", "bptt": "truncated",
                                                        "k2": "40"}
    # a grid value equal to the built-in default still wins over the preset's value
    preset = build_config({"preset": "presets/volatility-tbptt.yaml"})
    todo = points(preset, "cell=lstm,gru; bptt=full")
    assert [(c.model.cell, c.train.bptt, c.task.target) for _, _, c in todo] == [
        ("lstm", "full", "volatility"), ("gru", "full", "volatility")]
    with pytest.raises(ValueError, match="grid point rnn-truncated-k2=10: k2 must be >= k1"):
        points(build_config({"k1": 20}), "cell=rnn; bptt=truncated; k2=10,40")


@pytest.mark.slow
def test_a_failing_point_is_marked_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    base = build_config({"data": SPY, "epochs": 2, "hidden": 8,
                         "lookback": 16, "optimizer": "sgd", "momentum": 0, "clip": 0,
                         "experiment": "faults"})
    try:
        table = run_sweep(base, "lr=0.001,10")  # lr=10 without clipping overflows
    finally:
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    assert table.run_name.tolist() == ["lr=0.001", "lr=10"]
    assert table.status.tolist() == ["FINISHED", "FAILED"]
    assert "non-finite" in table.error[1] and table.best_val_loss.notna()[0]
    mlflow.set_tracking_uri(uri)
    failed = MlflowClient().get_run(table.run_id[1])
    assert failed.info.status == "FAILED" and failed.info.run_name == "lr=10"


@pytest.mark.slow
def test_sigterm_in_a_child_kills_it_and_the_parent(tmp_path, monkeypatch):
    from pipeline import main
    from pipeline.core import trainer
    from tests.test_checkpoint import counting

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    calls = []

    def second_interrupted(cfg, **kwargs):
        calls.append(cfg.model.cell)
        if len(calls) == 2:
            counting(monkeypatch, [0], sigterm_at=3, module=trainer)
        return run(cfg, **kwargs)

    run = main.run
    monkeypatch.setattr(main, "run", second_interrupted)
    base = build_config({"data": SPY, "epochs": 2, "hidden": 8,
                         "lookback": 16, "experiment": "stopped"})
    try:
        with pytest.raises(SystemExit) as stopped:
            run_sweep(base, "cell=rnn,gru,lstm")
    finally:
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    assert stopped.value.code == 128 + 15 and calls == ["rnn", "gru"]
    mlflow.set_tracking_uri(uri)
    status = {r.info.run_name: r.info.status for r in mlflow.search_runs(
        experiment_names=["stopped"], output_format="list")}
    assert status == {"rnn": "FINISHED", "gru": "KILLED", "sweep cell=rnn,gru,lstm": "KILLED"}


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """One sweep through `mlflow run . -e sweep`, in a store of its own."""
    store = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID",
                                                           "MLFLOW_RUN_ID")}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "OMP_NUM_THREADS": "1",
            "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "sweep", "--env-manager",
           "local", "--experiment-name", "sweep", "-P", f"grid={GRID}", *BASE,
           "-P", f"checkpoint_dir={store / 'ckpt'}"]
    proc = subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    return store, uri, proc.stdout


@pytest.mark.slow
def test_sweep_logs_children_under_a_parent_with_a_comparison(sweep_store, monkeypatch):
    _, uri, stdout = sweep_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sweep"], output_format="list")
    parent = next(r for r in runs if "best_run_id" in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 7 and len(children) == 6
    assert shlex.split(parent.data.params["grid"]) == [GRID]  # `mlflow run` logs it quoted
    names = {r.info.run_name for r in children}
    assert names == {"rnn-full", "rnn-truncated-k2=20", "rnn-truncated-k2=40", "gru-full",
                     "gru-truncated-k2=20", "gru-truncated-k2=40"}
    metric_names = {frozenset(r.data.metrics) for r in children}
    assert len(metric_names) == 1  # the same names, so the compare view lines them up
    assert {"best_val_loss", "memory_horizon", "test_rmse"} <= next(iter(metric_names))
    folder = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id)
    table = pd.read_csv(Path(folder) / "sweep" / "comparison.csv")
    assert list(table.columns[:5]) == ["run_name", "cell", "bptt", "k2", "status"]
    assert set(table.run_name) == names and (table.status == "FINISHED").all()
    assert table.best_val_loss.is_monotonic_increasing  # best first
    by_name = {r.info.run_name: r for r in children}
    for row in table.itertuples():
        assert row.best_val_loss == by_name[row.run_name].data.metrics["best_val_loss"]
    assert parent.data.tags["best_run_name"] == table.run_name[0]
    assert (Path(folder) / "plots" / "sweep.png").stat().st_size > 10_000
    assert MlflowClient().search_registered_models() == []  # children are not registered
    assert "6 runs" in stdout
    from pipeline import evaluate

    with pytest.raises(ValueError, match=f"run {parent.info.run_id} is a sweep's parent; give "
                                         f"one of its child runs \\(the best: "
                                         f"{table.run_id[0]}\\)"):
        evaluate.main(["--run_id", parent.info.run_id])


MODEL_TRAINING_VIEW = "runs?workflowType=machine_learning"  # not MLflow 3's GenAI view


def test_the_readme_opens_the_ui_in_the_model_training_view():
    assert f"/#/experiments/1/{MODEL_TRAINING_VIEW}" in (ROOT / "README.md").read_text()


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in ("chromium", "chromedriver") if not shutil.which(p)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed: .ci/run installs them through `make browser`")
        pytest.skip(f"{missing} not installed here; `make browser` installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    # As root in a container, with no network: no sandbox, no background connections.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--window-size=1920,1200"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def _wait_for_text(driver, texts, timeout=60) -> str:
    """The page's text once every one of `texts` is in it (the UI renders from JS)."""
    from selenium.webdriver.common.by import By

    deadline, body = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"the page never showed {missing}; it showed:\n{body[:2000]}")


@pytest.mark.slow
def test_mlflow_ui_lists_the_sweep_runs_and_their_metrics(sweep_store, tmp_path):
    from selenium.webdriver.common.by import By

    _, uri, _ = sweep_store
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("sweep")
    parent = mlflow.search_runs([exp.experiment_id], "tags.best_run_id != ''",
                                output_format="list")[0]
    children = mlflow.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["metrics.best_val_loss ASC"], output_format="list")
    shown = children[:4]  # the compare view draws the metrics of the first columns only
    ARTIFACTS.mkdir(exist_ok=True)
    with tracking_server(uri, tmp_path) as url:
        driver = _browser()
        try:  # the address the README gives, in a browser that has never been there
            driver.get(f"{url}/#/experiments/{exp.experiment_id}/{MODEL_TRAINING_VIEW}")
            body = _wait_for_text(driver, [parent.info.run_name, "7 matching runs"])
            assert "Model training" in body and "AI Gateway" not in body, body[:2000]
            assert "\nPrompts\n" not in body and "\nRuns\n" in body, body[:2000]
            driver.find_element(By.CSS_SELECTOR, ".ag-row button").click()  # the parent's "+"
            _wait_for_text(driver, [r.info.run_name for r in children])
            driver.save_screenshot(str(ARTIFACTS / "mlflow-ui-sweep-runs.png"))
            ids = urllib.parse.quote(json.dumps([r.info.run_id for r in shown]))
            exps = urllib.parse.quote(json.dumps([exp.experiment_id]))
            driver.get(f"{url}/#/compare-runs?runs={ids}&experiments={exps}")
            body = _wait_for_text(driver, ["Run Name:", "best_val_loss", "memory_horizon",
                                           *(r.info.run_name for r in shown)])
            driver.save_screenshot(str(ARTIFACTS / "mlflow-ui-sweep-compare.png"))
        finally:
            driver.quit()
    metrics = body[body.index("\nMetrics"):body.index("\nTags")]
    for run in shown:  # each run's best validation loss, as the UI rounds it
        assert f"{round(run.data.metrics['best_val_loss'], 3):g}" in metrics.split("\n")
    assert (ARTIFACTS / "mlflow-ui-sweep-compare.png").stat().st_size > 20_000
