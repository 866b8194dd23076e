"""Data-parallel training under torchrun (pipeline/core/distributed.py), 2 CPU ranks with one
thread each, against one process on the same global batch: the same final weights and
test metrics, for full BPTT (windows dealt across the ranks) and truncated BPTT (lanes
dealt across the ranks, k1 < k2). A rank killed with SIGKILL ends the run FAILED within
seconds, with nothing registered, and the run resumes to the weights of an uninterrupted
two-rank run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import PRICES, ROOT

pytestmark = pytest.mark.slow
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
            "--nproc_per_node=2"]
COMMON = ["--data", str(PRICES), "--hidden", "8", "--epochs", "3", "--patience", "0",
          "--register", "false"]
MODES = {"full": ["--lookback", "16", "--batch_size", "100"],
         "truncated": ["--bptt", "truncated", "--k1", "10", "--k2", "25", "--lanes", "8",
                       "--target", "volatility", "--horizon", "5", "--loss", "gaussian"]}


def launch(store: Path, args: list[str], ranks: int, **popen) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = (TORCHRUN if ranks > 1 else [sys.executable])
    return subprocess.Popen([*command, "-m", "pipeline.main", *args,
                             "--checkpoint_dir", str(store / "ckpt")], cwd=store, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finished(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def latest_run(store: Path):
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prices").experiment_id],
                              order_by=["attributes.start_time DESC"])
    return client, runs[0]


def weights(client: MlflowClient, run) -> dict:
    mlflow.set_tracking_uri(client.tracking_uri)
    path = mlflow.artifacts.download_artifacts(artifact_uri=run.data.tags["model_uri"])
    return torch.load(Path(path) / "artifacts" / "weights.pt", weights_only=True)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """For each mode: (one process, two ranks), each its client and run."""
    out = {}
    for mode, args in MODES.items():
        got = []
        for ranks in (1, 2):
            store = tmp_path_factory.mktemp(f"{mode}{ranks}")
            finished(launch(store, [*COMMON, *args], ranks))
            got.append(latest_run(store))
        out[mode] = got
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_two_ranks_train_the_weights_one_process_trains(pairs, mode):
    (c1, one), (c2, two) = pairs[mode]
    assert two.data.tags["ranks"] == "2" and "ranks" not in one.data.tags
    a, b = weights(c1, one), weights(c2, two)
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name
    for metric in ("best_val_loss", "test_rmse", "test_dir_acc", "epochs_run"):
        assert two.data.metrics[metric] == pytest.approx(one.data.metrics[metric], rel=1e-4)
    # the training loss logged is the whole batch's, not rank 0's share
    h1 = c1.get_metric_history(one.info.run_id, "train_loss")
    h2 = c2.get_metric_history(two.info.run_id, "train_loss")
    assert [m.value for m in h2] == pytest.approx([m.value for m in h1], rel=1e-4)


def rank_pid(parent: int, rank: int) -> int:
    """The pid of torchrun's worker of that rank (RANK in its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("PPid:")))
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under torchrun {parent}")


def test_a_killed_rank_fails_the_run_at_once_and_the_run_resumes(pairs, tmp_path):
    args = [*COMMON, *MODES["truncated"], "--register", "true"]
    proc = launch(tmp_path, args, 2, start_new_session=True)
    lines = []
    for line in proc.stdout:  # until rank 0 has finished its first epoch
        lines.append(line)
        if line.startswith("epoch 1/"):
            break
    else:
        raise AssertionError("".join(lines)[-3000:])
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    took = time.monotonic() - killed
    assert proc.returncode != 0
    client, run = latest_run(tmp_path)
    assert run.info.status == "FAILED" and took < 30, (run.info.status, took, out[-3000:])
    assert "another rank died" in out and f"--resume_run_id {run.info.run_id}" in out
    assert not client.search_registered_models()
    # resumed on two ranks: it replays the epoch it was in and ends where an
    # uninterrupted two-rank run ends
    resumed = finished(launch(tmp_path, ["--resume_run_id", run.info.run_id], 2))
    assert "registered prices-volatility-h5-gaussian version 1" in resumed
    client, again = latest_run(tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    c2, two = pairs["truncated"][1]
    a, b = weights(client, again), weights(c2, two)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_a_resume_on_another_number_of_ranks_is_refused(pairs):
    client, run = pairs["truncated"][1]
    store = Path(client.tracking_uri.removeprefix("sqlite:///")).parent
    MlflowClient(client.tracking_uri).set_terminated(run.info.run_id, "FAILED")
    out = launch(store, ["--resume_run_id", run.info.run_id], 1).communicate(timeout=300)[0]
    assert "error: resume_run_id: the run was trained on 2 rank(s); resume it on as many " \
           "(torchrun --nproc_per_node=2), not on 1" in out


def test_sigterm_to_torchrun_stops_every_rank_and_ends_the_run_killed(tmp_path):
    proc = launch(tmp_path, [*COMMON, *MODES["truncated"], "--epochs", "20"], 2,
                  start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    _, run = latest_run(tmp_path)
    assert run.info.status == "KILLED", out[-3000:]
    assert "training stopped by SIGTERM" in out
    assert f"torchrun --standalone --nproc_per_node=2 -m pipeline.main --resume_run_id " \
           f"{run.info.run_id}" in out
    assert "[rank1]: Traceback" not in out  # the other rank stops quietly
