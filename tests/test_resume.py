"""Resume after a crash: a training process killed with SIGKILL mid-epoch, resumed with
resume_run_id, ends with the same weights (bitwise) and metrics as an uninterrupted
run, and its MLflow metric history has every epoch exactly once."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from pipeline.core.checkpoint import LATEST
from tests.conftest import SPY, launch_env

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--data", SPY, "--lookback", "32", "--hidden", "16", "--layers", "2",
        "--dropout", "0.1", "--input_noise", "0.05", "--epochs", "5", "--patience", "0",
        "--schedule", "cosine", "--lanes", "8", "--k1", "10", "--k2", "30", "--batch_size", "16"]
EPOCH_METRICS = ("train_loss", "val_loss", "grad_norm", "lr")

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path):
    # one thread: the same arithmetic in every process, and no spin-waiting contention
    return launch_env(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _train(args, env, cwd):
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _mlflow_run_train(run_id, env, cwd):
    """The train step through `mlflow run`, which opens a launcher run of its own."""
    return subprocess.Popen([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "train",
                             "--env-manager", "local", "--experiment-name", "prices",
                             "-P", f"resume_run_id={run_id}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_mid_epoch(proc, folder: Path) -> int:
    """SIGKILL once two epochs have ended, halfway through the next. Returns the
    number of epochs the latest checkpoint holds."""
    seen, deadline = {}, time.monotonic() + 240
    while len(seen) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoints within 240 s"
        for path in folder.glob(f"*/{LATEST}"):
            epoch = torch.load(path, weights_only=True)["epoch"]
            seen.setdefault(epoch, time.monotonic())
        time.sleep(0.02)
    (e1, t1), (e2, t2) = sorted(seen.items())[:2]
    time.sleep((t2 - t1) / (e2 - e1) / 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return torch.load(next(folder.glob(f"*/{LATEST}")), weights_only=True)["epoch"]


def _weights(run_id: str) -> dict:
    uri = MlflowClient().get_run(run_id).data.tags["model_uri"]
    folder = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return torch.load(Path(folder) / "artifacts" / "weights.pt", weights_only=True)


def _history(run_id: str) -> dict:
    client = MlflowClient()
    return {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
            for name in EPOCH_METRICS}


@pytest.mark.parametrize("bptt, via", [("full", "train"), ("truncated", "mlflow run")])
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(bptt, via, env, tmp_path):
    args = [*ARGS, "--bptt", bptt, "--checkpoint_dir", str(tmp_path / "ckpt")]
    whole = _train(args, env, tmp_path)
    out = whole.communicate(timeout=300)[0]
    assert whole.returncode == 0, out[-3000:]

    crashed = tmp_path / "crashed"
    killed = _train([*args, "--checkpoint_dir", str(crashed)], env, tmp_path)
    done = _kill_mid_epoch(killed, crashed)
    assert killed.returncode == -signal.SIGKILL and 2 <= done < 5
    run_id = next(crashed.glob(f"*/{LATEST}")).parent.name

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"  # it never got to end it
    # killed inside epoch `done` (or, rarely, between logging it and checkpointing it)
    assert len(_history(run_id)["val_loss"]) in (done, done + 1)
    resumed = (_train(["--resume_run_id", run_id], env, tmp_path) if via == "train"
               else _mlflow_run_train(run_id, env, tmp_path))
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]

    runs = mlflow.search_runs(experiment_names=["prices"], output_format="list")
    first = runs[-1].info.run_id  # the uninterrupted one, the oldest
    assert first != run_id
    launchers = [r for r in runs if r.info.run_id not in (first, run_id)]
    assert len(launchers) == (1 if via == "mlflow run" else 0)  # no other new run
    for launcher in launchers:
        assert run_id in launcher.data.tags["mlflow.note.content"]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    want, got = _weights(first), _weights(run_id)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # bitwise
    history = _history(run_id)
    assert history == _history(first)  # same values, each epoch once
    assert [step for step, _ in history["val_loss"]] == [0, 1, 2, 3, 4]
    a, b = (MlflowClient().get_run(r).data.metrics for r in (first, run_id))
    for name in ("best_val_loss", "best_epoch", "memory_horizon"):
        assert a[name] == b[name]
