"""The run's parameters: the common parts (data, model, train, tracking) as dataclasses
of `param` fields, the `Config` that holds them with a task's own part, and the rules
every run obeys. The one place the common defaults are written; a task writes its own
in its `Params` (pipeline/tasks/). The tasks import this module; composing a config
from a task's parameters, a preset and the command line is `pipeline.core.config`'s job.

Only standard modules are imported, so `--help` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

TASKS = {  # the kinds of problem, task name: its module (a new task adds its line here)
    "prices": "pipeline.tasks.prices.task",
    "speech-classify": "pipeline.tasks.speech.classify",
    "speech-forecast": "pipeline.tasks.speech.forecast",
}

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "presets"


def param(default, help: str, choices: tuple = (), required: bool = False):
    """A config field with its meaning and allowed values (shown by --help and the
    configuration reference, docs/configuration.md); `required`: a step's own parameter
    without a default."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices),
                                            "required": required})


@dataclass
class DataParams:
    task: str = param("prices", "the kind of problem (its package in pipeline/tasks)",
                      tuple(TASKS))
    data: str = param("", "input: prices, a Yahoo-style CSV file or folder of them; speech, "
                          "a folder of audio files; empty: the task's bundled sample")
    val_frac: float = param(0.15, "share for validation: of the calendar (prices) or of the "
                                  "files (speech)")
    test_frac: float = param(0.15, "share for test: the latest dates (prices) or the files "
                                   "(speech, split=random)")


@dataclass
class ModelParams:
    cell: str = param("lstm", "recurrent cell, or mlp (feed-forward baseline, prices only)",
                      ("rnn", "lstm", "gru", "mlp"))
    hidden: int = param(32, "hidden units per layer")
    layers: int = param(1, "stacked layers")
    dropout: float = param(0.0, "dropout between layers and before the head")
    norm: str = param("none", "between stacked layers: sequence-wise batch norm or layer norm",
                      ("none", "layer", "batch"))
    init: str = param("orthogonal", "weight init",
                      ("orthogonal", "xavier", "gaussian", "uniform", "zeros"))
    device: str = param("auto", "auto: CUDA when present", ("auto", "cpu", "cuda"))


@dataclass
class TrainParams:
    bptt: str = param("full", "full: each example from a zero state; truncated: streams in "
                              "lanes, state carried", ("full", "truncated"))
    k1: int = param(50, "truncated: steps between updates")
    k2: int = param(50, "truncated: steps each update backpropagates (k2 >= k1)")
    lanes: int = param(32, "truncated: parallel lanes, shared by the series by their length")
    batch_size: int = param(64, "full: examples per update")
    epochs: int = param(20, "most epochs to train")
    optimizer: str = param("adam", "optimiser", ("adam", "sgd"))
    lr: float = param(0.001, "learning rate")
    momentum: float = param(0.9, "sgd only")
    weight_decay: float = param(0.0, "L2 penalty")
    schedule: str = param("none", "learning-rate schedule", ("none", "step", "plateau", "cosine"))
    step_size: int = param(10, "step: epochs between decays")
    gamma: float = param(0.5, "step and plateau: decay factor")
    clip: float = param(1.0, "max gradient norm; 0 turns clipping off (the norm is still "
                             "logged)")
    patience: int = param(5, "early stopping: epochs without validation gain; 0 turns it off")
    target_loss: float = param(0.0, "stop once the training loss reaches this; 0 turns it off")
    input_noise: float = param(0.0, "std of Gaussian noise added to normalised inputs in "
                                     "training")
    seed: int = param(0, "seeds weights, shuffling, dropout and noise")
    init_from: str = param("", "warm start from a logged model's weights (models:/NAME@ALIAS, "
                               "models:/NAME/N, runs:/ID/model); the shapes must match; a "
                               "speech-forecast model starts speech-classify's recurrent "
                               "layers (pretraining)")
    checkpoint_every: int = param(1, "epochs between latest.pt checkpoints (one is also "
                                     "written on SIGTERM/SIGINT); 0: on signals only")
    checkpoint_dir: str = param("checkpoints", "checkpoints go to checkpoint_dir/RUN_ID/: "
                                               "latest.pt and best.pt")
    dist_timeout: float = param(300.0, "under torchrun: seconds a rank waits for the others "
                                       "before the run fails (PyTorch's own default: 1800)")


@dataclass
class TrackingParams:
    experiment: str = param("", "MLflow experiment (python -m only; mlflow run: "
                                "--experiment-name); empty: the task's name")
    registered_model: str = param("", "registry name; empty: the task's (prices-{target}-"
                                      "h{horizon}, with -{loss} for gaussian and quantile "
                                      "and -market with a market table; speech-classify, "
                                      "speech-forecast)")
    register: bool = param(True, "register the model and move @champion when it is better")
    preset: str = param("", "YAML file of parameters, or the name of one in presets/; "
                            "applied under explicit ones")
    resume_run_id: str = param("", "continue this run from its latest checkpoint, with the "
                                   "params it was started with")


COMMON = {"data": DataParams, "model": ModelParams, "train": TrainParams,
          "tracking": TrackingParams}


@dataclass
class Config:
    """The common parts and `task`, the task's own Params. `base` is the folder that
    relative paths are taken from (the working directory; for a logged run, the one
    it ran in): not a param."""

    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    task: Any = None
    base: Path = field(default_factory=Path.cwd)

    @property
    def task_name(self) -> str:
        return self.data.task

    def parts(self) -> dict[str, Any]:
        """{part name: dataclass}: the common parts, then the task's, named after it."""
        common = {"data": self.data, "model": self.model, "train": self.train,
                  "tracking": self.tracking}
        return common if self.task is None else {**common, self.task_name: self.task}

    def flat(self) -> dict:
        """{name: value} over the whole tree."""
        return {f.name: getattr(part, f.name) for part in self.parts().values()
                for f in fields(part)}

    def params(self) -> dict[str, str]:
        """The run's params: every field, booleans in lower case."""
        return {k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in self.flat().items()}

    def get(self, name: str):
        return self.flat()[name]

    def set(self, name: str, value) -> None:
        for part in self.parts().values():
            if name in {f.name for f in fields(part)}:
                setattr(part, name, coerce(part, name, value))
                return
        raise ValueError(f"unknown parameter {name!r}")

    def path(self, value: str) -> Path:
        """A path from the config: relative ones are taken from `base`."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p


def coerce(part, name: str, value):
    """A value given as text (command line, MLproject, YAML) as the field's type."""
    kind = type(getattr(type(part)(), name))
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    try:
        if kind is int and isinstance(value, str | float):
            as_float = float(value)  # "20" or "20.0"
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if kind is str and value is None:  # an empty YAML value
            return ""
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {'an' if kind is int else 'a'} {kind.__name__}, "
                         f"got {value!r}") from None


def check_choices(part) -> None:
    """Every field of a params dataclass holds one of its allowed values, if it has
    a list of them."""
    for f in fields(part):
        choices = f.metadata.get("choices")
        if choices and getattr(part, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {list(choices)}, "
                             f"got {getattr(part, f.name)!r}")


MAX_REGISTERED_NAME = 251  # the registry keeps 256 characters; the lock adds ".lock"


def check_registered_model(name: str) -> None:
    """A registry name (empty: the task's) that MLflow and the registration lock can take."""
    if name and (not name.strip() or any(c in name for c in "/:") or name.endswith(".lock")
                 or len(name) > MAX_REGISTERED_NAME):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(f"registered_model: {shown} is not a usable name: it must not be "
                         "blank, hold '/' or ':', end in '.lock' (kept for the registration "
                         f"lock) or be longer than {MAX_REGISTERED_NAME} characters")


def validate(cfg: Config) -> None:
    """The common rules: allowed values, ranges, and how the parts fit together."""
    for part in cfg.parts().values():
        check_choices(part)
    m, t, d = cfg.model, cfg.train, cfg.data
    for name in ("hidden", "layers", "k1", "k2", "lanes", "batch_size", "epochs", "step_size"):
        if cfg.get(name) < 1:
            raise ValueError(f"{name} must be >= 1, got {cfg.get(name)!r}")
    for name in ("lr",):
        if not cfg.get(name) > 0:
            raise ValueError(f"{name} must be > 0, got {cfg.get(name)!r}")
    for name in ("checkpoint_every", "clip", "patience", "target_loss", "input_noise",
                 "weight_decay", "seed"):
        if not 0 <= cfg.get(name) < math.inf:
            raise ValueError(f"{name} must be >= 0 and finite, got {cfg.get(name)!r}")
    for name, low, high in (("dropout", 0, 1), ("momentum", 0, 1)):
        if not low <= cfg.get(name) < high:
            raise ValueError(f"{name} must be in [{low}, {high}), got {cfg.get(name)!r}")
    if not 0 < t.gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1] (a decay factor), got {t.gamma!r}")
    if not 0 < t.dist_timeout < math.inf:
        raise ValueError(f"dist_timeout must be > 0 seconds, got {t.dist_timeout!r}")
    if t.seed >= 2 ** 32:
        raise ValueError(f"seed must be below 2**32, got {t.seed!r}")
    if not t.checkpoint_dir.strip():
        raise ValueError("checkpoint_dir must not be empty (it is where runs checkpoint)")
    check_registered_model(cfg.tracking.registered_model)
    if not (0 < d.val_frac < 1 and 0 < d.test_frac < 1 and d.val_frac + d.test_frac < 0.9):
        raise ValueError(f"val_frac and test_frac must be in (0, 1) and leave at least 10 % "
                         f"for training, got {d.val_frac!r} and {d.test_frac!r}")
    if t.k2 < t.k1:
        raise ValueError(f"k2 must be >= k1 (each update backpropagates k2 >= k1 steps), "
                         f"got k1={t.k1}, k2={t.k2}")
    if t.bptt == "truncated" and m.cell == "mlp":
        raise ValueError("bptt=truncated needs a recurrent cell (rnn, lstm, gru); "
                         "the mlp has no state to carry")


