"""The whole pipeline against a shared tracking server, started as a team starts it
(deploy/tracking-server.sh: PostgreSQL in a folder of its own, `mlflow server` on it
with served artifacts), with only MLFLOW_TRACKING_URI pointing there: `mlflow run`
trains and registers, @champion moves to the better version, two trainings run at once,
a sweep and a walk-forward backtest run their children, `mlflow models serve` answers a
batch from models:/NAME@champion, a run killed with SIGKILL resumes, and under torchrun
two ranks train and register. Nothing reads artifacts from a local path: the test's
working folders hold none (the server keeps them). With MLflow's basic-auth app, the
users live in the same PostgreSQL database."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow_server import free_port, post, serving

from tests.conftest import ROOT, SPY, launch_env, mlflow_run, python_m

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "deploy" / "tracking-server.sh"
NAME = "prices-returns-h1"
TINY = {"data": SPY, "hidden": "4", "lookback": "16"}


def script_env(state: Path) -> dict:
    return {**os.environ, "STATE": str(state), "PG_PORT": str(free_port()),
            "MLFLOW_PORT": str(free_port()), "MLFLOW": str(Path(sys.executable).parent / "mlflow")}


@pytest.fixture(scope="module")
def server():
    # not under pytest's tmp_path: its folders are closed to the postgres user
    state = Path(tempfile.mkdtemp(prefix="seqpredict-tracking-"))
    state.chmod(0o755)
    env = script_env(state)
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip().removeprefix("export MLFLOW_TRACKING_URI=")
    assert uri == f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    again = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                           timeout=60)  # already running: the same line, nothing else
    assert (again.returncode, again.stdout) == (0, started.stdout), again.stderr
    moved = subprocess.run([str(SCRIPT), "start"], env={**env, "MLFLOW_PORT": str(free_port())},
                           capture_output=True, text=True, timeout=60)
    assert moved.returncode == 1 and f"already running on 127.0.0.1:{env['MLFLOW_PORT']}" \
        in moved.stderr
    yield uri
    subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120, check=True)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


def argv(params: dict) -> list[str]:
    return [a for k, v in params.items() for a in (f"--{k}", v)]


def ok(proc) -> str:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


def test_the_store_is_postgresql_and_artifacts_are_served(server):
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("Default")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")


def test_mlflow_run_trains_registers_and_the_champion_moves_to_the_better(server, work):
    """Two trainings through `mlflow run`; the second (4 epochs, not 1) beats the first."""
    for epochs in ("1", "4"):
        ok(mlflow_run("main", {**TINY, "epochs": epochs}, work, server, "prices"))
    assert champion_by_the_checks(MlflowClient(server), 2) == "2"  # 4 epochs beat 1


def champion_by_the_checks(client: MlflowClient, count: int) -> str:
    """The registry holds `count` versions and @champion is where the versions' own
    checks moved it, in the order they registered; returns it."""
    versions = sorted(client.search_model_versions(f"name='{NAME}'"),
                      key=lambda v: int(v.version))
    assert len(versions) == count
    expected = "1"
    for v in versions[1:]:
        if " beats version" in v.tags["champion_check"]:
            expected = v.version
    assert client.get_model_version_by_alias(NAME, "champion").version == expected
    return expected


def test_two_trainings_at_once_both_register_and_the_champion_follows_the_checks(server,
                                                                                 work):
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.main",
                              *argv({**TINY, "epochs": "2", "seed": str(seed)})],
                             cwd=work, env=launch_env(server), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    champion_by_the_checks(MlflowClient(server), 4)


def test_a_sweep_and_a_walk_forward_run_their_children_on_the_server(server, work):
    ok(mlflow_run("sweep", {**TINY, "epochs": "1", "grid": "cell=gru,rnn"}, work, server,
                  "prices"))
    ok(mlflow_run("main", {**TINY, "epochs": "1", "target": "volatility", "horizon": "5",
                           "loss": "gaussian", "folds": "2"}, work, server, "prices"))
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("prices").experiment_id])
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert len(children) >= 4 and all(r.info.status == "FINISHED" for r in children)
    pooled = next(r for r in parents.values() if r.data.params.get("folds") == "2")
    assert "test_qlike" in pooled.data.metrics  # pooled from the folds' served artifacts


def test_the_champion_is_served_from_the_server(server, work, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    frame = pd.read_csv(SPY).tail(40)
    rows = [["SPY", frame["Adj Close"].tolist(), frame["High"].tolist(), frame["Low"].tolist(),
             frame["Volume"].astype(float).tolist()]]
    body = {"dataframe_split": {"columns": ["series_id", "close", "high", "low", "volume"],
                                "data": rows}}
    with serving(f"models:/{NAME}@champion", work) as url:
        status, text = post(url, body)
    assert status == 200, text
    assert json.loads(text)["predictions"][0]["series_id"] == "SPY"


def test_a_run_killed_with_sigkill_resumes(server, work):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.main", "--data", SPY, "--hidden",
                             "4", "--lookback", "16", "--epochs", "40", "--patience", "0",
                             "--register", "false"], cwd=work, env=launch_env(server),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    client = MlflowClient(server)
    run = client.search_runs([client.get_experiment_by_name("prices").experiment_id],
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "RUNNING"  # SIGKILL leaves it so; the checkpoint is local
    out = ok(python_m("main", ["--resume_run_id", run.info.run_id], work, server))
    assert f"run {run.info.run_id}" in out
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.data.metrics["epochs_run"] == 40


def test_two_ranks_under_torchrun_train_and_register_on_the_server(server, work):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = ok(subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m",
                             "pipeline.main", *argv({**TINY, "epochs": "2"})], cwd=work,
                            env=launch_env(server), capture_output=True, text=True,
                            timeout=600))
    assert "registered prices-returns-h1 version 5" in out
    client = MlflowClient(server)
    v5 = client.get_model_version(NAME, "5")
    assert client.get_run(v5.run_id).data.tags["ranks"] == "2"
    # every artifact went to the server: none in the folder all these steps ran in
    assert not [p for p in ("mlruns", "mlartifacts", "mlflow.db") if (work / p).exists()]


def test_a_port_taken_by_another_program_is_refused_before_any_work(tmp_path):
    """Else that program's /health (an `mlflow ui` on SQLite, say) would answer for ours."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        env = script_env(tmp_path) | {"MLFLOW_PORT": str(other.getsockname()[1])}
        proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 1 and not proc.stdout
    assert f"port {env['MLFLOW_PORT']} on 127.0.0.1 is taken by another program" in proc.stderr
    assert not (tmp_path / "pg").exists()  # nothing made


def test_stop_leaves_alone_a_program_that_took_over_a_stale_pid(tmp_path):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / "mlflow.pid").write_text(str(other.pid))
        (tmp_path / "mlflow.port").write_text("5000")
        subprocess.run([str(SCRIPT), "stop"], env=script_env(tmp_path), check=True, timeout=60)
        assert other.poll() is None  # not ours: still running
        assert not (tmp_path / "mlflow.pid").exists()
    finally:
        other.kill()


def test_basic_auth_keeps_its_users_in_the_server_s_postgresql(tmp_path, monkeypatch):
    """MLFLOW_APP=basic-auth: MLflow's users live in the tracking server's PostgreSQL
    database (the auth config the script writes), nothing lands in the folder the script
    was started from, a client without credentials gets 401 and one with them trains and
    registers. The first start needs the admin's password, and says so."""
    import psycopg2

    state = Path(tempfile.mkdtemp(prefix="seqpredict-auth-"))
    state.chmod(0o755)
    here = tmp_path / "started-here"
    here.mkdir()
    env = script_env(state) | {"MLFLOW_APP": "basic-auth"}
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    start = [str(SCRIPT), "start"]
    try:
        refused = subprocess.run(start, env=env, cwd=here, capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode == 1, refused.stderr
        assert "needs a password to create the admin user 'admin'" in refused.stderr
        password = "Seqpredict-admin-0"
        started = subprocess.run(start, env=env | {"MLFLOW_AUTH_ADMIN_PASSWORD": password},
                                 cwd=here, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stderr
        uri = started.stdout.strip().removeprefix("export MLFLOW_TRACKING_URI=")
        args = argv({**TINY, "epochs": "1"})
        anonymous = python_m("main", args, tmp_path, uri)
        assert anonymous.returncode == 2 and "401" in anonymous.stderr, anonymous.stderr
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        assert "now @champion" in ok(python_m("main", args, tmp_path, uri))
        with psycopg2.connect(host="127.0.0.1", port=env["PG_PORT"], user="mlflow",
                              dbname="mlflow",
                              password=(state / "pg-password").read_text().strip()) as db:
            cursor = db.cursor()
            cursor.execute("SELECT username, is_admin FROM users")
            assert cursor.fetchall() == [("admin", True)]
        assert list(here.iterdir()) == []  # no ./basic_auth.db, nothing else
        assert (state / "basic-auth.ini").stat().st_mode & 0o077 == 0  # it holds a password
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120, check=True)
        shutil.rmtree(state, ignore_errors=True)
