"""A run's configuration composed: the common parts (pipeline/core/params.py) plus the
part of its task (`task=prices`: pipeline/tasks/prices/task.py's Params, and so on).
Every field has a plain name (`epochs`, `lookback`, `k2`, ...) used alike by the
command line, `mlflow run -P`, YAML presets and the params of the MLflow run; its
default, its meaning and its allowed values are written once, in params.py or in the
task's module. `python -m pipeline.core.config` prints the reference table of them all.

Resolution: defaults, then the preset's values, then the values given explicitly.
Only NumPy-free standard modules are imported, so `--help` stays fast.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline import tasks
from pipeline.core.params import COMMON, PRESETS, Config, DataParams, validate


def unknown_message(name: str, task: str | None, known: list[str]) -> str:
    """"unknown parameter 'lookbak'; closest: lookback", or which task has it (when the
    parameters are a task's)."""
    others = {n: t for t in tasks.TASKS if task and t != task for n in task_fields(t)
              if n not in known}
    if name in others:
        return (f"{name} is a parameter of task {others[name]}, not of task {task} "
                f"(set task={others[name]} to use it)")
    close = difflib.get_close_matches(name, [*known, *others], n=3, cutoff=0.6)
    shown = [f"{c} (task {others[c]})" if c in others else c for c in close]
    return (f"unknown parameter {name!r}; "
            + (f"closest: {', '.join(shown)}" if shown else "see --help for the list"))


def task_fields(name: str) -> list[str]:
    return [f.name for f in fields(tasks.load(name).Params)]


def preset_values(preset: str, base: Path | None = None) -> dict:
    """The parameters in a preset: a YAML file (relative to `base`) or a bundled one's
    name (`volatility-tbptt` for presets/volatility-tbptt.yaml)."""
    import yaml

    path = Path(preset).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if not path.exists() and (PRESETS / f"{preset}.yaml").exists():
        path = PRESETS / f"{preset}.yaml"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ValueError(f"preset: {preset} is not a file (bundled presets: {bundled})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ValueError(f"preset: {path} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"preset: {path} is not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise ValueError(f"preset: {path} should hold NAME: VALUE lines")
    return values


def build_config(overrides: dict | None = None, base: Path | None = None) -> Config:
    """Defaults, then the values of the `preset` named in `overrides`, then the other
    overrides (the values given explicitly). Relative paths are taken from `base` (the
    working directory). The result is validated and resolved: `experiment` and
    `registered_model` are filled in from the task when left empty."""
    overrides = dict(overrides or {})
    cfg = Config(base=base or Path.cwd())
    preset = overrides.get("preset") or ""
    from_preset = preset_values(preset, cfg.base) if preset else {}
    set_value(cfg, "task", overrides.get("task", from_preset.get("task", cfg.data.task)))
    task = tasks.load(cfg.task_name)
    cfg.task = task.Params()
    for name, value in from_preset.items():
        if name == "task":  # resolved above: an explicit task wins over the preset's
            continue
        try:
            set_value(cfg, name, value)
        except ValueError as err:
            raise ValueError(f"preset {preset}: {err}") from None
    for name, value in overrides.items():
        set_value(cfg, name, value)
    validate(cfg)
    task.validate(cfg)
    cfg.tracking.experiment = cfg.tracking.experiment or cfg.task_name
    cfg.tracking.registered_model = cfg.tracking.registered_model or task.model_name(cfg)
    return cfg


def set_value(cfg: Config, name: str, value) -> None:
    """`cfg.set`, with an unknown name told as the closest known one, or the task it
    belongs to."""
    if name not in cfg.flat():
        raise ValueError(unknown_message(name, cfg.task_name, list(cfg.flat())))
    cfg.set(name, value)


def from_params(params: dict[str, str], base: Path | None = None) -> Config:
    """The config of a logged run. Its params are already resolved, so the preset is not
    read again (its file may be gone); what training derived and logged as params
    (the task's `derived_params`) is not config. `mlflow run` logs values that need shell quoting
    quoted ('a b'); they are read back unquoted."""
    def unquote(v: str) -> str:
        return shlex.split(v)[0] if len(v) >= 2 and v[0] == v[-1] == "'" else v

    derived = tasks.load(params.get("task", DataParams.task)).derived_params
    cfg = build_config({k: unquote(v) for k, v in params.items()
                        if k != "preset" and k not in derived}, base)
    cfg.tracking.preset = unquote(params.get("preset", ""))
    return cfg


def table_rows() -> list[tuple[str, str, Any, str, tuple]]:
    """(name, part, default, meaning, choices) of every parameter: the common parts and
    each task's own, in the order --help shows them (for the reference table). A name two
    tasks share with one meaning is listed once; with two meanings, once per task."""
    rows, seen = [], set()
    parts = [*COMMON.items(), *((name, tasks.load(name).Params) for name in tasks.TASKS)]
    for part, cls in parts:
        for f in fields(cls):
            if (f.name, f.metadata["help"]) not in seen:
                seen.add((f.name, f.metadata["help"]))
                rows.append((f.name, part, f.default, f.metadata["help"],
                             f.metadata["choices"]))
    return rows


def reference_table() -> str:
    """The configuration reference (docs/configuration.md; a test checks it holds this)."""
    lines = ["| parameter | part | default | meaning |", "|---|---|---|---|"]
    for name, part, default, help, choices in table_rows():
        shown = "(empty)" if default == "" else f"`{str(default).lower()}`" if isinstance(
            default, bool) else f"`{default}`"
        allowed = f" (`{'`, `'.join(choices)}`)" if choices else ""
        lines.append(f"| `{name}` | {part} | {shown} | {help}{allowed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_table(), end="")
