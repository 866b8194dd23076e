"""MLproject, conda.yaml, pyproject.toml, README and CI agree with each other and the code."""

import re
import tomllib
from pathlib import Path

import yaml

from pipeline.config import DEFAULTS
from pipeline.entrypoints import render_mlproject

ROOT = Path(__file__).resolve().parents[1]


def test_mlproject_is_the_generated_one():
    assert (ROOT / "MLproject").read_text() == render_mlproject(), \
        "regenerate it: python -m pipeline.config --mlproject > MLproject"


def test_mlproject_defaults_match_the_config_dataclasses():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    main = spec["entry_points"]["main"]["parameters"]
    assert set(main) == set(DEFAULTS)
    for name, default in DEFAULTS.items():
        given = main[name]["default"]
        expected = str(default).lower() if isinstance(default, bool) else default
        assert given == expected, f"{name}: MLproject says {given!r}, config says {default!r}"
    for point in spec["entry_points"].values():
        for name in point["parameters"]:
            assert f"--{name} {{{name}}}" in point["command"]


def test_pins_agree_between_pyproject_and_conda():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert "python=3.11" in conda
    assert set(pip) <= pins and set(project["dependencies"]) <= set(pip)
    assert all("==" in p for p in pins)
    wanted = {"torch==2.13.0", "mlflow==3.17.2"}
    assert wanted <= pins and any(p.startswith("librosa==0.11.") for p in pins)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_documents_every_parameter_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for name, default in DEFAULTS.items():
        shown = "(empty)" if default == "" else (
            f"`{str(default).lower()}`" if isinstance(default, bool) else f"`{default}`")
        row = re.compile(rf"^\| `{name}` \| \w+ \| {re.escape(shown)} \|", re.M)
        assert row.search(readme), f"README's config table: {name} should show {shown}"
