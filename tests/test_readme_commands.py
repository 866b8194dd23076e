"""Every command of the README and docs/ that registers a model, run as written from the
project folder on the bundled data at full size, one store for all: a limit that only the full data
reaches (the 405 validation clips of the bundled FSDD against the 256 clips a request
may hold) fails here. Each name is registered several times, through both launchers,
so every registration after the first scores the challenger and the champion on the
full validation split. Two things are added to each command: one epoch (the sizes
that matter are the data's, not training's) and a checkpoint folder of the test's."""

import re
import shlex
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import FSDD, PRICES, ROOT, launch_env

pytestmark = pytest.mark.slow
MLFLOW_RUN = "mlflow run . --env-manager local --experiment-name"
PLACES = {"/path/to/prices.csv": str(PRICES / "SPY.csv"), "/path/to/folder": str(PRICES),
          "/path/to/audio": str(FSDD)}
# (command as the README writes it, the registered model it adds a version to), in order
COMMANDS = [
    ("python -m pipeline.main --cell gru --bptt truncated --k1 50 --k2 100",
     "prices-returns-h1"),
    (f"{MLFLOW_RUN} prices -P cell=gru -P bptt=truncated -P k1=50 -P k2=100",
     "prices-returns-h1"),
    (f"{MLFLOW_RUN} prices", "prices-returns-h1"),
    ("python -m pipeline.main --data /path/to/prices.csv", "prices-returns-h1"),
    ("python -m pipeline.main --data /path/to/folder", "prices-returns-h1"),
    (f"{MLFLOW_RUN} prices -P preset=volatility-tbptt", "prices-volatility-h5-gaussian"),
    ("python -m pipeline.main --preset volatility-tbptt", "prices-volatility-h5-gaussian"),
    (f"{MLFLOW_RUN} prices -P preset=volatility-tbptt -P epochs=5",
     "prices-volatility-h5-gaussian"),
    ("torchrun --standalone --nproc_per_node=2 -m pipeline.main --preset volatility-tbptt",
     "prices-volatility-h5-gaussian"),
    ("python -m pipeline.main --task speech-classify", "speech-classify"),
    (f"{MLFLOW_RUN} speech-classify -P preset=speech-fsdd", "speech-classify"),
    ("python -m pipeline.main --preset speech-fsdd", "speech-classify"),
    (f"{MLFLOW_RUN} speech-classify -P task=speech-classify -P data=/path/to/audio",
     "speech-classify"),
    ("python -m pipeline.main --task speech-forecast --data /path/to/audio", "speech-forecast"),
    ("python -m pipeline.main --preset speech-apc", "speech-forecast"),
    ("python -m pipeline.main --task speech-forecast --bptt full --hidden 64 --lr 0.003 "
     "--epochs 30 --patience 8", "speech-forecast"),
]
REGISTER = f"{MLFLOW_RUN} prices -e register -P run_id=<RUN_ID>"


def as_run(command: str, checkpoints: Path) -> list[str]:
    """The command's argv on the bundled data, with one epoch and the test's checkpoints."""
    argv = shlex.split(command)
    for place, real in PLACES.items():
        argv = [a.replace(place, real) for a in argv]
    mlflow_run = argv[:2] == ["mlflow", "run"]  # -P name=value; else --name value
    for key, value in {"epochs": "1", "checkpoint_dir": str(checkpoints)}.items():
        at = next((i for i, a in enumerate(argv) if a == f"--{key}" or a.startswith(f"{key}=")),
                  None)
        if at is None:
            argv += ["-P", f"{key}={value}"] if mlflow_run else [f"--{key}", value]
        elif mlflow_run:
            argv[at] = f"{key}={value}"
        else:
            argv[at + 1] = value
    return argv


def launched(argv: list[str], uri: str) -> str:
    import subprocess

    proc = subprocess.run(argv, cwd=ROOT, env=launch_env(uri), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout + proc.stderr


def test_the_commands_are_the_readme_s():
    pages = "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    for command, _ in [*COMMANDS, (REGISTER, None)]:
        assert command in pages, command
    assert f"{MLFLOW_RUN} prices -P preset=volatility-tbptt" in (ROOT / "Makefile").read_text()


def test_every_readme_command_that_registers_does_on_the_full_bundled_data(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, runs = MlflowClient(uri), {}
    for command, name in COMMANDS:
        out = launched(as_run(command, tmp_path / "checkpoints"), uri)
        (run_id,) = set(re.findall(r"^run ([0-9a-f]{32}) in experiment ", out, re.M))
        assert f"registered {name} version " in out, out[-3000:]
        runs.setdefault(name, []).append(run_id)
    for name, ids in runs.items():
        versions = sorted(client.search_model_versions(f"name='{name}'"),
                          key=lambda v: int(v.version))
        assert [v.run_id for v in versions] == ids, name
        expected = "1"  # @champion went where each version's comparison said
        for v in versions[1:]:
            assert f" version {expected}'s " in v.tags["champion_check"], v.tags
            if " beats version" in v.tags["champion_check"]:
                expected = str(v.version)
        assert str(client.get_model_version_by_alias(name, "champion").version) == expected
    # the same recipe again, by either launcher or on two ranks: a tie, the champion stays
    ties = MlflowClient(uri).search_model_versions("name='prices-volatility-h5-gaussian'")
    assert all("a tie keeps @champion" in v.tags["champion_check"] for v in ties
               if str(v.version) != "1"), [v.tags["champion_check"] for v in ties]
    first = runs["prices-returns-h1"][0]
    out = launched(shlex.split(REGISTER.replace("<RUN_ID>", first)), uri)
    assert f"run {first} is already version 1 of prices-returns-h1" in out
    assert len(client.search_model_versions("name='prices-returns-h1'")) == 5
