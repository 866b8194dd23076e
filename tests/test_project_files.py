"""MLproject, conda.yaml, pyproject.toml, README and CI agree with each other and the code."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from pipeline.core import mlproject
from pipeline.core.config import reference_table

ROOT = Path(__file__).resolve().parents[1]


def test_mlproject_is_the_generated_one():
    assert (ROOT / "MLproject").read_text() == mlproject.render(), \
        "regenerate it: python -m pipeline.core.mlproject > MLproject"


def test_mlproject_declares_only_required_parameters():
    """Everything else passes through as --name value, so `mlflow run` logs only the
    values a user gives (the step logs the rest of the resolved config)."""
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert set(spec["entry_points"]) == {"main", "prepare", "train", "evaluate", "register",
                                         "predict", "sweep", "score-spark"}
    for name, point in spec["entry_points"].items():
        for param, decl in point.get("parameters", {}).items():
            assert "default" not in decl, f"{name}: {param} has a default"
            assert f"--{param} {{{param}}}" in point["command"]


def test_pins_agree_between_pyproject_and_conda():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]).union(*project["optional-dependencies"].values())
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert "python=3.11" in conda and "openjdk=17" in conda
    assert set(pip) <= pins and set(project["dependencies"]) <= set(pip)
    assert all("==" in p for p in pins)
    wanted = {"torch==2.13.0", "mlflow==3.17.2"}
    assert wanted <= pins and any(p.startswith("librosa==0.11.") for p in pins)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_configuration_reference_holds_the_generated_parameter_table():
    assert reference_table() in (ROOT / "docs" / "configuration.md").read_text(), \
        "docs/configuration.md's table: paste python -m pipeline.core.config"


def test_the_version_is_one_unreleased_past_the_changelog_s_last_release():
    from packaging.version import Version

    import pipeline

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pipeline.__version__"}
    text = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d\d-\d\d)$", text, re.M)
    assert "## [Unreleased]" in text and released
    assert [v for v, _ in released] == sorted((v for v, _ in released), key=Version, reverse=True)
    assert Version(pipeline.__version__) > Version(released[0][0])


def test_pre_commit_lints_with_the_project_s_ruff(tmp_path):
    """The hook runs `ruff check`, as `make lint` does, and fails a commit that ruff fails."""
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert [h["entry"] for h in hooks] == [".venv/bin/ruff check"]
    assert "VENV := .venv" in (ROOT / "Makefile").read_text()
    assert "$(BIN)/ruff check ." in (ROOT / "Makefile").read_text()
    bin_ = Path(sys.executable).parent
    env = {**os.environ, "PATH": "/usr/bin:/bin",  # the venv's ruff found without PATH
           "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    (tmp_path / ".venv").symlink_to(bin_.parent)
    shutil.copy(ROOT / ".pre-commit-config.yaml", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # ruff's settings
    (tmp_path / "good.py").write_text("import os\n\nprint(os.sep)\n")
    (tmp_path / "bad.py").write_text("import os\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)

    def hook(name):
        return subprocess.run([bin_ / "pre-commit", "run", "--files", name], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    assert hook("good.py").returncode == 0
    bad = hook("bad.py")
    assert bad.returncode == 1 and "F401" in bad.stdout, bad.stdout + bad.stderr
