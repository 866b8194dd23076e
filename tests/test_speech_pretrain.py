"""Pretraining inside a speech-classify run (`pretrain_epochs`,
pipeline/tasks/speech/pretrain.py): forecasters fit on the run's training audio, their
recurrent layers copied in, each direction where it belongs."""

import re
import signal
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from models.networks import build_model
from pipeline.main import main
from pipeline.tasks.speech.pretrain import copy_layers
from tests.conftest import launch_env

MODEL = {"cell": "gru", "hidden": 8, "layers": 1, "dropout": 0.0, "norm": "none",
         "init": "xavier"}


def test_each_forecaster_s_layers_go_to_their_direction_and_the_head_stays():
    torch.manual_seed(0)
    net = build_model({**MODEL, "bidirectional": True, "readout": "mean"}, 5, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ahead, behind = (build_model({**MODEL, "bidirectional": False}, 5, 5) for _ in range(2))
    copy_layers(ahead, net, reverse=False)
    copy_layers(behind, net, reverse=True)
    got = net.state_dict()
    for k, v in ahead.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(got[k], v) and torch.equal(got[f"{k}_reverse"],
                                                          behind.state_dict()[k])
    assert all(torch.equal(got[k], before[k]) for k in got if k.startswith("head."))


@pytest.mark.parametrize("args, message", [
    (["--init_from", "runs:/0123/model"], "pretrain_epochs and init_from both start"),
    (["--bidirectional", "true", "--layers", "2"], "bidirectional network of one layer only"),
    (["--pretrain_epochs", "-1"], r"pretrain_epochs must be in \[0, 100\], got -1"),
])
def test_what_pretraining_cannot_do_is_refused_before_any_work(store, args, message):
    with pytest.raises(ValueError, match=message):
        main(["--task", "speech-classify", "--pretrain_epochs", "1", *args])


@pytest.mark.slow
def test_a_classifier_pretrained_in_its_run_starts_from_forecasters_that_learnt(store,
                                                                              small_fsdd):
    """Both directions' forecasters bring validation L1 down, and the run says so; the
    held-out speaker of split=speaker is not in the training audio they read."""
    out = main(["--task", "speech-classify", "--data", str(small_fsdd), "--epochs", "1",
                "--hidden", "16", "--bidirectional", "true", "--pretrain_epochs", "2",
                "--batch_size", "8",
                "--split", "speaker", "--test_speaker", "lucas", "--register", "false",
                "--feature_cache", str(store / "cache")])
    said = MlflowClient().get_run(out["run_id"]).data.tags["pretrained"]
    trained = int(re.search(r"on (\d+) training utterances", said)[1])
    assert said.startswith("2 epochs forecasting 3 frames") and trained < 120 - 30  # lucas out
    falls = re.findall(r"(forward|backward): validation L1 ([\d.]+) -> ([\d.]+)", said)
    assert [d for d, _, _ in falls] == ["forward", "backward"]
    assert all(float(after) < 0.95 * float(before) for _, before, after in falls)


@pytest.mark.slow
def test_a_run_stopped_while_pretraining_ends_killed_with_nothing_to_resume(tmp_path, small_fsdd):
    """No checkpoint exists before training starts: no resume command is offered."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.main", "--task", "speech-classify", "--data",
         str(small_fsdd), "--epochs", "1", "--hidden", "16", "--pretrain_epochs", "100",
         "--batch_size", "8", "--register", "false"],
        cwd=tmp_path, env=launch_env(f"sqlite:///{tmp_path / 'mlflow.db'}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("pretrain forward epoch 1/100"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, out[-3000:]
    # "training stopped" inside an update, "the step stopped" between two (validating,
    # printing): where the signal lands is the machine's timing, and either is right
    assert re.search(r"(training|the step) stopped by SIGTERM\nno checkpoint written yet: "
                     r"nothing to resume; start the run again", out), out[-3000:]
    assert "resume with" not in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("speech-classify").experiment_id])[0]
    assert run.info.status == "KILLED"
