"""The command line as a user meets it: --help, names written in full, one-line errors
with exit code 2, relative paths from the caller's directory, progress in logs."""

import shutil
import subprocess
import sys

import pytest

from pipeline import tasks
from pipeline.core import cli
from pipeline.core.trainer import NumericalFault
from tests.conftest import PRICES, ROOT, launch_env, mlflow_run, python_m

STEPS = ("main", "prepare", "train", "evaluate", "register", "predict", "sweep")
HEAVY = ("torch", "mlflow", "pandas", "librosa", "matplotlib")


def _help(step: str, *args: str) -> tuple[str, list[str]]:
    """The help text of `python -m pipeline.STEP ARGS --help`, and which heavy packages
    printing it imported."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['x', *{list(args)!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_module('pipeline.{step}', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text, _, heavy = proc.stdout.rpartition("HEAVY ")
    return text, eval(heavy)  # noqa: S307 - our own print of a list of names


@pytest.mark.parametrize("step", STEPS)
def test_help_is_light_and_lists_every_option_with_its_meaning(step):
    text, heavy = _help(step)
    assert heavy == [], f"--help imported {heavy}"
    assert f"python -m pipeline.{step}" in text
    if step in ("main", "prepare", "train", "sweep"):
        for name in ("cell", "epochs", "lookback", "target", "k2"):
            assert f"--{name} " in text
        assert "One of: rnn, lstm, gru, mlp. Default: lstm." in " ".join(text.split())
        assert "--shift" not in text  # another task's
    if step == "sweep":
        assert "--grid" in text


def test_help_of_another_task_lists_its_own_parameters():
    text, heavy = _help("main", "--task", "speech-forecast")
    assert heavy == []
    for name in ("shift", "n_mels", "split", "normalise"):
        assert f"--{name} " in text
    assert "--lookback" not in text and "--tickers" not in text
    text, _ = _help("main", "--preset", "speech-fsdd")  # the preset chooses the task
    assert "--n_mels " in text and "--lookback" not in text


@pytest.mark.parametrize("args, message", [
    (["--cel", "gru"], "error: unknown parameter 'cel'; closest: cell"),
    (["--lookbak", "32"], "error: unknown parameter 'lookbak'; closest: lookback"),
    (["--shift", "2"], "error: shift is a parameter of task speech-forecast, not of task prices"),
    (["--epochs"], "error: argument --epochs: expected one argument"),
    (["--cell", "transformer"], "error: cell must be one of ['rnn', 'lstm', 'gru', 'mlp'], "
                                "got 'transformer'"),
    (["--preset", "nothing"], "error: preset: nothing is not a file"),
    (["stray"], "error: unexpected argument 'stray'"),
])
def test_bad_command_lines_are_one_line_and_exit_2(tmp_path, args, message):
    proc = python_m("main", args, tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "usage" not in proc.stderr


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    def raises(err):
        def main(argv):
            raise err
        return main

    for err in (ValueError("data: x.csv does not exist"), FileNotFoundError("no such file"),
                NumericalFault("training stopped: non-finite loss (nan) at update 3")):
        with pytest.raises(SystemExit) as stop:
            cli.run(raises(err), [])
        assert stop.value.code == 2
        assert capsys.readouterr().err == f"error: {err}\n"
    with pytest.raises(SystemExit):
        cli.run(raises(ValueError("bad")), ["--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: bad\n")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(SystemExit):
        cli.run(raises(ValueError("bad")), [])
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug is not an expected error
        cli.run(raises(ZeroDivisionError()), [])


@pytest.mark.slow
def test_missing_data_and_missing_model_are_one_line_from_a_real_process(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = python_m("prepare", ["--data", "missing.csv"], tmp_path, uri)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: data: {tmp_path / 'missing.csv'} does not exist"]
    proc = python_m("predict", ["--model_uri", "models:/nothing@champion"], tmp_path, uri)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: model_uri: cannot load models:/nothing@champion")
    proc = python_m("prepare", ["--data", "missing.csv", "--debug"], tmp_path, uri)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_mlflow_run_with_a_misspelt_parameter_says_so_in_one_line(tmp_path):
    proc = mlflow_run("main", {"lookbak": 32}, tmp_path, f"sqlite:///{tmp_path / 'm.db'}",
                      "prices")
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: unknown parameter 'lookbak'; closest: lookback"], proc.stderr
    assert "usage:" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_relative_paths_are_the_callers_and_progress_shows_in_logs(tmp_path):
    (tmp_path / "mine").mkdir()
    frame = (PRICES / "SPY.csv").read_text().splitlines()
    (tmp_path / "mine" / "SPY.csv").write_text("\n".join(frame[:1] + frame[-300:]) + "\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = python_m("train", ["--data", "mine/SPY.csv", "--epochs", "2", "--hidden", "4",
                              "--lookback", "8", "--checkpoint_dir", "ck"], tmp_path, uri)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("epoch ")] == [
        "epoch 1/2", "epoch 2/2"]  # one line per epoch when the output is not a terminal
    assert any(line.startswith("run ") and "in experiment prices" in line for line in lines)
    assert (tmp_path / "ck").is_dir() and not (ROOT / "ck").exists()
    # the project folder's data/ is not looked in for a relative path from elsewhere
    proc = python_m("prepare", ["--data", "data/prices/SPY.csv"], tmp_path, uri)
    assert proc.returncode == 2 and str(tmp_path / "data/prices/SPY.csv") in proc.stderr
    shutil.rmtree(tmp_path / "mine")


def test_every_task_module_is_light_to_import():
    """--help imports the task modules; their heavy imports wait for their methods."""
    code = ("import sys\nfrom pipeline import tasks\n"
            + "".join(f"tasks.load({t!r})\n" for t in tasks.TASKS)
            + f"print([m for m in {HEAVY!r} if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env=launch_env("sqlite://"), timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_experiment_param_under_mlflow_run_is_refused_before_any_work(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123")  # as `mlflow run` sets it for its command
    with pytest.raises(cli.UsageError, match="under mlflow run, choose the experiment with "
                                             "--experiment-name"):
        cli.parse_config(["--experiment", "mine"], "")


def test_help_says_what_is_required_and_what_a_boolean_takes():
    text, _ = _help("register")
    assert "the training run whose model to register. Required." in " ".join(text.split())
    text, _ = _help("main")
    assert "One of: true, false. Default: true." in " ".join(text.split())  # --register


@pytest.mark.parametrize("step, args, message", [
    ("main", ["--folds", "2"], "folds: a cross-validation runs its folds one after another"),
    ("train", ["--norm", "batch", "--layers", "2"], "norm=batch under torchrun"),
    ("train", ["--task", "speech-classify", "--pretrain_epochs", "1"],
     "pretrain_epochs: pretraining runs in one process"),
    ("sweep", [], "sweep: its points train one after another in one process"),
])
def test_what_cannot_run_under_torchrun_is_refused_before_any_work(monkeypatch, step, args,
                                                                   message):
    import importlib

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    module = importlib.import_module(f"pipeline.{step}")
    with pytest.raises(ValueError, match=message):
        module.main(["--epochs", "1", *args])
