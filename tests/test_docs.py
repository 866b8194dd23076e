"""Docs that cannot drift: every command in README.md and docs/ that starts one of the
project's steps (`python -m pipeline.X ...`, `torchrun ... -m pipeline.X ...`, `mlflow
run . ... -P name=value`) names a step or MLproject entry point that exists, with
presets and parameters that its `parse` accepts; other `python -m` modules of the
project must exist. The commands are parsed, not run (tests/test_readme_commands.py
runs those that register a model)."""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.core.cli import UsageError
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LAUNCHERS = ("python", "python3", ".venv/bin/python", "torchrun", "mlflow")
# `python -m` modules that are the project's
OWN = ("pipeline", "bench", "deploy", "tests", "data_loaders")
STEPS = {"main", "prepare", "train", "evaluate", "register", "predict", "sweep", "score_spark"}


def shell_commands(page: Path) -> list[str]:
    """The lines of the page's fenced code blocks (continuations joined) and its inline
    code spans, each split at `&&`, `;` and `|` into simple commands."""
    text = page.read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"^```.*?^```", "", text,
                                                          flags=re.S | re.M))
    out = []
    for line in lines + spans:
        line = line.strip().removeprefix("$ ")
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split, lexer.commenters = True, "#"
            words = list(lexer)
        except ValueError:  # not shell (an unbalanced quote in prose or output)
            continue
        part = []
        for w in [*words, ";"]:
            if w in (";", "&&", "||", "|", "&"):
                out.append(_without_env(part))
                part = []
            else:
                part.append(w)
    return [argv for argv in out if argv[:1] and argv[0] in LAUNCHERS]


def _without_env(words: list[str]) -> list[str]:
    """`OMP_NUM_THREADS=1 MLFLOW_TRACKING_URI=x python ...` -> `python ...`."""
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[i]):
        i += 1
    return words[i:]


def step_and_args(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of a command that starts a step or a project module, or
    None for other commands (mlflow models serve, python -c, ...)."""
    if argv[0] == "mlflow":
        if argv[1:2] != ["run"] or argv[2:3] != ["."]:
            return None
        entry, args, rest = "main", [], argv[3:]
        for flag, value in zip(rest, rest[1:], strict=False):
            if flag == "-e":
                entry = value
            elif flag == "-P":
                name, _, v = value.partition("=")
                args += [f"--{name}", v]
        points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
        if entry not in points:
            raise UsageError(f"mlflow run -e {entry}: no such entry point in MLproject "
                             f"({', '.join(points)})")
        return points[entry]["command"].split()[2], args
    if "-m" not in argv[:-1]:  # also prose's bare `python -m`
        return None
    at = argv.index("-m")
    return argv[at + 1], argv[at + 2:]


def check(argv: list[str]) -> None:
    """Raises (UsageError or ValueError, naming what is wrong) if the command would not
    start as written."""
    found = step_and_args(argv)
    if found is None:
        return
    module, args = found
    if module.split(".")[0] not in OWN or module.split(".")[-1].isupper():  # pipeline.STEP
        return
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"no module {module}")
    if module.startswith("pipeline.") and module.split(".")[-1] in STEPS \
            and "--help" not in args:
        importlib.import_module(module).parse(args)


def documented() -> list[tuple[str, list[str]]]:
    return [(page.relative_to(ROOT).as_posix(), argv)
            for page in PAGES for argv in shell_commands(page)]


def test_the_docs_hold_commands_of_every_launcher():
    launchers = {argv[0].rpartition("/")[2].rstrip("3") for _, argv in documented()}
    assert {"python", "mlflow", "torchrun"} <= launchers, launchers
    steps = {found[0] for _, argv in documented() if (found := step_and_args(argv))}
    assert {f"pipeline.{s}" for s in STEPS} <= steps, "a step no page shows how to start"


@pytest.mark.parametrize("page, argv", documented(),
                         ids=lambda x: x if isinstance(x, str) else " ".join(x)[:80])
def test_every_documented_command_parses(page, argv):
    try:
        check(argv)
    except (UsageError, ValueError) as err:
        pytest.fail(f"{page}: `{shlex.join(argv)}`: {err}")


@pytest.mark.parametrize("command, message", [
    ("python -m pipeline.main --lookbak 3", "closest: lookback"),
    ("python -m pipeline.main --preset volatility-nope", "preset: volatility-nope"),
    ("python -m pipeline.trian --epochs 1", "no module pipeline.trian"),
    ("mlflow run . --env-manager local -e serve", "no such entry point"),
    ("mlflow run . --env-manager local -e sweep -P grid=cel=gru", "closest: cell"),
    ("torchrun --nproc_per_node=2 -m pipeline.main --cell gur", "cell must be one of"),
    ("python -m pipeline.predict --model_uri models:/x@champion --input a.csv "
     "--output b.txt", "output must end in .csv or .parquet"),
    ("python -m pipeline.predict --model_uri models:/speech-classify@champion --states "
     "s.parquet", "--mode stream and --states go together (price models only"),
    ("python -m pipeline.predict --output /proc/p.csv", "output: /proc/p.csv: cannot write "
     "in /proc"),
])
def test_the_check_refuses_a_command_that_would_not_start(command, message):
    with pytest.raises((UsageError, ValueError), match=re.escape(message)):
        check(shlex.split(command))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_of_the_readme_reaches_a_file_and_its_heading():
    """MkDocs checks the links between docs/ pages (strict); the README, read on the
    forge, is checked here: each relative link names a file that exists and, with an
    anchor, a heading of that file."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        target, _, anchor = link.partition("#")
        page = ROOT / target if target else ROOT / "README.md"
        assert page.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
            assert anchor in {github_slug(h) for h in headings}, \
                f"README.md links to {link}: no such heading in {target or 'README.md'}"
