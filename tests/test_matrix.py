"""Every task x every entry point x {python -m, mlflow run} x {preset, none}, on tiny
data and one epoch: the run's params are exactly the resolved config (and only its
task's), it lands in its task's experiment, it has the metrics its step writes, and
the registry holds what it should afterwards.

Each (task, launcher, preset) is a chain of the seven steps in a store of its own:
prepare, train, evaluate and register (of the train run), predict (with the
champion), main, sweep. The `mlflow run` chains run two at a time in subprocesses
while the `python -m` chains run here, in process, through the same `cli.run` that
`python -m` calls.
"""

import concurrent.futures
import importlib
import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from data_loaders import files
from pipeline.core import cli
from pipeline.core.config import build_config
from tests.conftest import ROOT, SPY, fresh_store, mlflow_run

pytestmark = pytest.mark.slow
STEPS = ("prepare", "train", "evaluate", "register", "predict", "main", "sweep")
PRESETS = {"prices": "volatility-tbptt", "speech-classify": "speech-fsdd",
           "speech-forecast": "speech-apc"}
TEST_METRIC = {"prices": "test_rmse", "speech-classify": "test_accuracy",
               "speech-forecast": "test_l1"}
PREDICTED = {"prices": {"series_id", "step", "date"}, "speech-classify": {"label", "p_0"},
             "speech-forecast": {"l1", "embedding"}}
GRID = "cell=gru"  # one point: a parent with a child, at the cost of one training
CELLS = [(t, launcher, preset) for t in PRESETS for launcher in ("python -m", "mlflow run")
         for preset in (True, False)]


def task_args(task: str, preset: bool, data: dict) -> dict:
    """The tiny, one-epoch parameters of a cell (strings, as a user types them)."""
    if task == "prices":
        args = {"data": data["prices"], "lookback": "8", "lanes": "4", "k1": "10", "k2": "20"}
    else:
        args = {"data": data["fsdd"], "feature_cache": data["cache"]}
        args |= ({"k1": "10", "k2": "20", "lanes": "4"} if task == "speech-forecast" else
                 {"synthetic_cache": data["cache"] + "/synthetic"})
    args |= {"epochs": "1", "hidden": "4", "checkpoint_dir": data["ckpt"]}
    return args | ({"preset": PRESETS[task]} if preset else
                   {} if task == "prices" else {"task": task})


def launch(launcher: str, step: str, args: dict, store: Path, experiment: str) -> None:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    if launcher == "mlflow run":
        proc = mlflow_run(step, args, store, uri, experiment)
        assert proc.returncode == 0, f"{step}: {proc.stderr[-3000:]}"
        return
    argv = [a for k, v in args.items() for a in (f"--{k}", str(v))]
    module = importlib.import_module(f"pipeline.{step}")
    with fresh_store(store):
        cli.run(module.main, argv)


def run_ids(client: MlflowClient) -> set[str]:
    return {r.info.run_id for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}


def snapshot(client: MlflowClient, new: set[str], train_run: str | None, name: str) -> dict:
    """What a step left, read right after it: its new runs, the train run's metric names,
    and the registry under the cell's name."""
    runs = []
    for run_id in sorted(new):
        r = client.get_run(run_id)
        runs.append({"id": run_id, "params": r.data.params, "metrics": set(r.data.metrics),
                     "tags": r.data.tags, "name": r.info.run_name,
                     "experiment": client.get_experiment(r.info.experiment_id).name})
    versions = sorted(client.search_model_versions(f"name='{name}'"),
                      key=lambda v: int(v.version))
    try:
        champion = str(client.get_model_version_by_alias(name, "champion").version)
    except Exception:  # noqa: BLE001 - no such name or alias yet
        champion = None
    return {"runs": runs, "champion": champion,
            "trained": set(client.get_run(train_run).data.metrics) if train_run else set(),
            "versions": [(str(v.version), v.run_id, v.tags) for v in versions],
            "name_tags": client.get_registered_model(name).tags if versions else {}}


def chain(task: str, launcher: str, preset: bool, root: Path, data: dict) -> dict:
    """Run the seven steps of one cell; {step: its snapshot}."""
    store = root / f"{task}-{launcher.replace(' ', '')}-{'preset' if preset else 'none'}"
    store.mkdir()
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    args = task_args(task, preset, data | {"ckpt": str(store / "ckpt")})
    name = build_config(args).tracking.registered_model
    seen, steps, train_run = set(), {}, None
    for step in STEPS:
        if step in ("evaluate", "register"):
            step_args = {"run_id": train_run}
        elif step == "predict":
            step_args = {"model_uri": f"models:/{name}@champion", "output": store / "out.csv",
                         "input": data["prices"] if task == "prices" else data["predict"]}
        else:
            step_args = args | ({"grid": GRID} if step == "sweep" else {})
        launch(launcher, step, step_args, store, task)
        new = run_ids(client) - seen
        seen |= new
        if step == "train":
            (train_run,) = new
        steps[step] = snapshot(client, new, train_run, name)
    return {"store": store, "args": args, "name": name, "steps": steps, "train": train_run}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, small_fsdd):
    root = tmp_path_factory.mktemp("matrix")
    lines = Path(SPY).read_text().splitlines()
    (root / "SPY.csv").write_text("\n".join(lines[:1] + lines[-400:]) + "\n")
    (root / "predict").mkdir()
    for f in sorted(small_fsdd.glob("*_jackson_[0-1].wav")):
        (root / "predict" / f.name).write_bytes(f.read_bytes())
    data = {"prices": str(root / "SPY.csv"), "fsdd": str(small_fsdd),
            "cache": str(root / "features"), "predict": str(root / "predict")}
    launch("python -m", "prepare", task_args("speech-classify", False, data | {"ckpt": str(root)}),
           root, "warm-up")  # fill the feature cache once, before chains share it
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # like the subprocesses: the chains share two cores
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        remote = {c: pool.submit(chain, *c, root, data) for c in CELLS if c[1] == "mlflow run"}
        for c in CELLS:
            if c[1] == "python -m":
                out[c] = chain(*c, root, data)
        out |= {c: f.result() for c, f in remote.items()}
    torch.set_num_threads(threads)
    return out


def config_params(params: dict, task: str) -> dict:
    """A run's params less what training derived (speech-classify: the temperature)."""
    derived = importlib.import_module("pipeline.tasks").load(task).derived_params
    assert set(derived) <= set(params) or not derived, "derived params missing"
    return {k: v for k, v in params.items() if k not in derived}


def expected_params(cell: dict, extra: dict | None = None) -> dict:
    """The config the cell's values resolve to, as the run's params should be."""
    return build_config({**cell["args"], **(extra or {})}, ROOT).params()


@pytest.mark.parametrize("task, launcher, preset", CELLS)
@pytest.mark.parametrize("step", STEPS)
def test_cell(matrix, task, launcher, preset, step):
    cell = matrix[task, launcher, preset]
    got = cell["steps"][step]
    runs, versions = got["runs"], got["versions"]
    assert {r["experiment"] for r in runs} <= {task}, "a run landed in another experiment"

    if step in ("prepare", "train", "main"):
        (run,) = runs
        params = run["params"] if step == "prepare" else config_params(run["params"], task)
        assert params == expected_params(cell), "the params are not the config"
        assert ("best_val_loss" in run["metrics"]) == (step != "prepare")
        assert (TEST_METRIC[task] in run["metrics"]) == (step == "main")
        assert run["tags"]["workdir"]
    if step in ("evaluate", "register", "predict"):  # they work in the train run
        assert len(runs) == (launcher == "mlflow run")  # the run mlflow run opened, noted
        assert all(cell["train"] in r["tags"]["mlflow.note.content"] or step == "predict"
                   for r in runs)
        assert TEST_METRIC[task] in got["trained"]
    if step in ("prepare", "train", "evaluate"):
        assert versions == [] and got["champion"] is None  # nothing registered yet
    if step in ("register", "predict"):
        assert [(v, r) for v, r, _ in versions] == [("1", cell["train"])]
        assert got["champion"] == "1" and got["name_tags"]["task"] == task
    if step == "predict":
        out = pd.read_csv(cell["store"] / "out.csv")
        assert len(out) > 0 and PREDICTED[task] <= set(out.columns)
        mode = (cell["store"] / "out.csv").stat().st_mode & 0o777
        assert mode == 0o666 & ~files._umask()  # any new file's, readable as the umask says
    if step in ("main", "sweep"):  # main registered a second version; the sweep none
        assert [v for v, *_ in versions] == ["1", "2"]
        beats = "does not beat" not in versions[1][2]["champion_check"]
        assert got["champion"] == ("2" if beats else "1"), versions[1][2]["champion_check"]
        assert versions[1][1] == cell["steps"]["main"]["runs"][0]["id"]
    if step == "sweep":
        (parent,) = [r for r in runs if "best_run_id" in r["tags"]]
        children = [r for r in runs if r is not parent]
        assert parent["params"] == expected_params(cell) | {"grid": GRID}
        assert [r["name"] for r in children] == ["gru"]
        for child in children:
            assert config_params(child["params"], task) == \
                expected_params(cell, {"cell": "gru", "register": "false"})
            assert child["tags"]["mlflow.parentRunId"] == parent["id"]
            assert TEST_METRIC[task] in child["metrics"]


def test_the_matrix_covers_every_task_step_and_launcher(matrix):
    assert set(matrix) == set(itertools.product(PRESETS, ("python -m", "mlflow run"),
                                                (True, False)))
    assert all(set(c["steps"]) == set(STEPS) for c in matrix.values())


@pytest.mark.parametrize("launcher, preset", [("python -m", True), ("mlflow run", False)])
def test_leave_one_speaker_out_under_each_launcher(tmp_path, small_fsdd, launcher, preset):
    """split=speaker through `main`: a parent run with the resolved config and a child per
    speaker, nothing registered, the parent summarising its children's test metrics. Each
    launcher once, with and without the preset (the matrix above crosses them all)."""
    data = {"fsdd": str(small_fsdd), "cache": str(tmp_path / "features"),
            "ckpt": str(tmp_path / "ckpt")}
    args = task_args("speech-classify", preset, data) | {"split": "speaker"}
    launch(launcher, "main", args, tmp_path, "speech-classify")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_id: r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs.values() if r is not parent]
    assert parent.data.params == expected_params({"args": args})
    assert sorted(c.data.params["test_speaker"] for c in children) == \
        ["george", "jackson", "lucas", "nicolas"]
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert config_params(c.data.params, "speech-classify") == expected_params({"args": args}, {
            "test_speaker": c.data.params["test_speaker"], "register": "false"})
    accuracy = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(sum(accuracy) / 4)
    assert client.search_registered_models() == []
