"""The command line of every step: one option per config field, one-line errors.

    python -m pipeline.main --task speech-classify --help

The options are the common parameters and those of the task chosen by --task (or
by the preset); their help comes from the fields' metadata. Names must be written
in full (no prefixes); an unknown one gets the closest known names. An expected
error (bad data, bad config, a missing model, a numerical fault) prints one line
and exits with 2; --debug (or SEQPREDICT_DEBUG=1) shows the traceback too.
`mlflow run -P name=value` arrives here as --name value. Only light modules are
imported before the arguments are parsed, so --help answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import fields
from pathlib import Path

from pipeline import tasks
from pipeline.core.config import build_config, preset_values, unknown_message
from pipeline.core.params import COMMON, Config

DEBUG_ENV = "SEQPREDICT_DEBUG"


class UsageError(ValueError):
    """A command line that cannot be run as written."""


def _prog() -> str:
    """`python -m pipeline.main` as the user typed it (argparse would say main.py)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec else Path(sys.argv[0]).name


class Parser(argparse.ArgumentParser):
    """No prefix abbreviations; errors raise instead of printing the usage."""

    def __init__(self, **kwargs):
        super().__init__(prog=_prog(), usage="%(prog)s [--name value ...]",
                         allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        raise UsageError(message)


def describe(f) -> str:
    """A field's help: meaning, allowed values, default."""
    choices = ("true", "false") if isinstance(f.default, bool) else f.metadata.get("choices")
    default = str(f.default).lower() if isinstance(f.default, bool) else f.default
    return (f"{f.metadata.get('help', '')}."
            + (f" One of: {', '.join(choices)}." if choices else "")
            + (" Required." if f.metadata.get("required") else
               f" Default: {default if default != '' else '(empty)'}."))


def add_fields(parser: argparse.ArgumentParser, cls: type, title: str) -> set[str]:
    group = parser.add_argument_group(title)
    for f in fields(cls):
        group.add_argument(f"--{f.name}", metavar=f.name.upper(), default=argparse.SUPPRESS,
                           help=describe(f))
    return {f.name for f in fields(cls)}


def _task_of(argv: list[str]) -> str:
    """The task the options are for: --task, else the preset's, else the default's."""
    pre = Parser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    if known.task:
        return known.task
    if known.preset:
        try:
            return preset_values(known.preset).get("task", "prices")
        except ValueError:
            pass  # build_config says what is wrong with it
    return "prices"


def parse(argv: list[str] | None, doc: str, parts: dict[str, type], epilog: str = "",
          task: str | None = None) -> dict[str, dict]:
    """{part: {name: text given}} for the options given, from `parts` ({title: the
    dataclass whose fields are options}); `task`, the task they are for, if any."""
    parser = Parser(description=doc, epilog=epilog)
    names = {title: add_fields(parser, cls, title) for title, cls in parts.items()}
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), None)
        if flag is None:
            raise UsageError(f"unexpected argument {unknown[0]!r}; options are --name value")
        known = sorted(set().union(*names.values()))
        raise UsageError(unknown_message(flag[2:].split("=")[0], task, known))
    given = vars(args)
    return {title: {k: given[k] for k in n if k in given} for title, n in names.items()}


def parse_config(argv: list[str] | None, doc: str, extra: dict[str, type] | None = None
                 ) -> tuple[Config, dict]:
    """The resolved config from the command line, and the values of `extra` options
    (a step's own, such as the sweep's grid)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    task = _task_of(argv)
    task_params = tasks.load(task).Params
    epilog = ("other tasks: " + ", ".join(f"--task {t} --help" for t in tasks.TASKS if t != task)
              + "\nunder mlflow run: -P name=value for each --name value")
    parts = {**COMMON, task: task_params, **(extra or {})}
    given = parse(argv, doc, parts, epilog, task)
    overrides = {k: v for title, values in given.items() if title not in (extra or {})
                 for k, v in values.items()}
    if "experiment" in overrides and os.environ.get("MLFLOW_RUN_ID"):  # before any work
        raise UsageError("experiment: under mlflow run, choose the experiment with "
                         "--experiment-name; the experiment param is for python -m")
    extras = {k: v for title in (extra or {}) for k, v in given[title].items()}
    return build_config(overrides, Path.cwd()), extras


def parse_params(argv: list[str] | None, doc: str, cls: type):
    """A step's own parameters (a dataclass of `config.param` fields) from the command
    line, as their types."""
    from pipeline.core.params import check_choices, coerce

    argv = sys.argv[1:] if argv is None else list(argv)
    values = parse(argv, doc, {"parameters": cls})["parameters"]
    out = cls()
    for name, value in values.items():
        setattr(out, name, coerce(out, name, value))
    for f in fields(cls):
        if f.metadata.get("required") and not getattr(out, f.name):
            raise UsageError(f"{f.name} is required: {f.metadata['help']}")
    try:
        check_choices(out)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return out


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 1000 else text[:1000] + " ..."


def _expected(err: BaseException) -> bool:
    """Errors of input, config, data, models or numbers; not bugs. MlflowException is
    known by name, so that importing this module does not import MLflow."""
    return (isinstance(err, ValueError | OSError | FloatingPointError)
            or any(c.__name__ == "MlflowException" for c in type(err).__mro__))


def run(main, argv: list[str] | None = None) -> None:
    """Run a step's `main(argv)` as a command: exit 2 with one line on an expected
    error (and its traceback with --debug), 130 on Ctrl-C outside training."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if "--debug" in argv:  # `mlflow run -P debug=true` passes "--debug true"
        i = argv.index("--debug")
        value = argv[i + 1] if argv[i + 1:i + 2] in (["true"], ["false"]) else None
        debug = value != "false"
        del argv[i:i + (2 if value else 1)]
    from pipeline.core.signals import Interrupted, sigterm_raises

    try:
        with sigterm_raises():
            main(argv)
    except KeyboardInterrupt:
        print("stopped (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except Interrupted as stop:  # SIGTERM outside a run (inside one, the run says it)
        print(str(stop), file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except Exception as err:  # noqa: BLE001 - sorted into expected errors and bugs below
        if not _expected(err):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
