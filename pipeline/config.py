"""The run configuration: one dataclass tree, the only place defaults are written.

Every field has a plain, unique name (`epochs`, `lookback`, `k2`, ...) used
alike by the command line, MLproject parameters, YAML presets and the params
of the MLflow run. MLproject is generated from here (`python -m pipeline.config
--mlproject`) and a test checks the two agree.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from data_loaders.audio import SPLITS, FeatureSettings
from data_loaders.prices import REPAIRS, TARGETS
from models.networks import CELLS, INITS, NORMS

ROOT = Path(__file__).resolve().parents[1]


DOMAINS = ("prices", "speech")
SAMPLE_DATA = {"prices": "data/prices", "speech": "data/fsdd/recordings"}


@dataclass
class DataConfig:
    domain: str = "prices"  # prices or speech
    data: str = ""  # prices: CSV file or folder; speech: folder of audio; empty: bundled sample
    tickers: str = ""  # comma-separated; when set, prices come from yfinance instead of data
    start: str = ""  # first date (YYYY-MM-DD) to use; empty: from the beginning
    end: str = ""  # last date to use; empty: to the end
    interval: str = "1d"  # yfinance bar interval
    cache_dir: str = "data/cache"  # yfinance cache: one CSV per ticker and interval
    refresh: bool = False  # refetch tickers even when cached
    repair: str = "none"  # bad CSV rows: none (error), drop, or ffill (logged either way)
    target: str = "returns"  # returns (next H log returns) or volatility (realised, next H)
    horizon: int = 1  # H, steps ahead
    lookback: int = 64  # L, window length for full BPTT and the MLP; history a forecast needs
    val_frac: float = 0.15  # share of the calendar (prices) or files (speech) for validation
    test_frac: float = 0.15  # share of the calendar (the latest dates) or files for test

    def path(self) -> str:
        """`data`, or the bundled sample of the domain."""
        return self.data or SAMPLE_DATA[self.domain]


@dataclass
class SpeechConfig:
    task: str = "classify"  # classify (utterance -> label) or forecast (frame `shift` ahead)
    shift: int = 3  # forecast: predict the log-mel frame this many steps ahead
    split: str = "index"  # index (take < test_index is test), random, or speaker
    test_index: int = 5  # split=index: takes below this are test (FSDD's own split)
    skip_bad: bool = False  # leave bad audio files out (logged) instead of stopping
    feature_cache: str = "data/cache/features"  # empty: no cache
    normalise: str = "global"  # global (mean/std of training frames) or utterance


@dataclass
class ModelConfig:
    cell: str = "lstm"  # rnn, lstm, gru, or mlp (feed-forward baseline)
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
    norm: str = "none"  # between stacked layers: none, layer, batch (sequence-wise)
    init: str = "orthogonal"  # orthogonal, xavier, gaussian, uniform, zeros
    device: str = "auto"  # auto (cuda when present), cpu, cuda


@dataclass
class TrainConfig:
    bptt: str = "full"  # full (windows of L steps) or truncated (streams in lanes)
    k1: int = 50  # truncated: steps between updates
    k2: int = 50  # truncated: steps each update backpropagates (k2 >= k1)
    lanes: int = 32  # truncated: parallel lanes, shared by the series by their length
    batch_size: int = 64  # full: windows per update
    epochs: int = 20
    optimizer: str = "adam"  # adam or sgd
    lr: float = 0.001
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "none"  # none, step, plateau, cosine
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.5  # step and plateau: decay factor
    clip: float = 1.0  # max gradient norm; 0 turns clipping off (the norm is still logged)
    patience: int = 5  # early stopping: epochs without validation gain; 0 turns it off
    target_loss: float = 0.0  # stop once the training loss reaches this; 0 turns it off
    input_noise: float = 0.0  # std of Gaussian noise added to normalised inputs in training
    seed: int = 0
    init_from: str = ""  # warm start: models:/NAME@ALIAS, models:/NAME/N or runs:/ID/model
    checkpoint_every: int = 1  # epochs between checkpoints (and on SIGTERM/SIGINT); 0: on signals
    checkpoint_dir: str = "checkpoints"  # one folder per run: latest.pt and best.pt


@dataclass
class TrackingConfig:
    experiment: str = "prices"
    registered_model: str = ""  # empty: prices-{target}-h{horizon}
    register: bool = True  # register the model and move @champion when it is better
    preset: str = ""  # YAML file of parameters, applied under explicit ones
    resume_run_id: str = ""  # continue this run from its latest checkpoint, with its params


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    audio: FeatureSettings = field(default_factory=FeatureSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def flat(self) -> dict:
        """{name: value} over the whole tree."""
        return {f.name: getattr(part, f.name) for part in self._parts() for f in fields(part)}

    def params(self) -> dict[str, str]:
        """The run's params, written as MLproject writes them (booleans in lower case)."""
        return {k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in self.flat().items()}

    def _parts(self):
        return [self.data, self.speech, self.audio, self.model, self.train, self.tracking]

    def model_name(self) -> str:
        if self.tracking.registered_model:
            return self.tracking.registered_model
        if self.data.domain == "speech":
            return f"speech-{self.speech.task}"
        return f"prices-{self.data.target}-h{self.data.horizon}"

    def validate(self) -> Config:
        d, m, t = self.data, self.model, self.train
        _choice("domain", d.domain, DOMAINS)
        _choice("target", d.target, TARGETS)
        _choice("repair", d.repair, REPAIRS)
        _choice("cell", m.cell, (*CELLS, "mlp"))
        _choice("norm", m.norm, NORMS)
        _choice("init", m.init, INITS)
        _choice("device", m.device, ("auto", "cpu", "cuda"))
        _choice("bptt", t.bptt, ("full", "truncated"))
        _choice("optimizer", t.optimizer, ("adam", "sgd"))
        _choice("schedule", t.schedule, ("none", "step", "plateau", "cosine"))
        for name in ("horizon", "lookback", "hidden", "layers", "k1", "k2", "lanes",
                     "batch_size", "epochs", "step_size"):
            if self.get(name) < 1:
                raise ValueError(f"{name} must be >= 1, got {self.get(name)!r}")
        for name in ("lr", "gamma"):
            if not self.get(name) > 0:
                raise ValueError(f"{name} must be > 0, got {self.get(name)!r}")
        for name in ("checkpoint_every", "dropout", "clip", "patience", "target_loss",
                     "input_noise", "weight_decay", "momentum"):
            if self.get(name) < 0:
                raise ValueError(f"{name} must be >= 0, got {self.get(name)!r}")
        if not 0 <= m.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {m.dropout!r}")
        if not (0 < d.val_frac < 1 and 0 < d.test_frac < 1 and d.val_frac + d.test_frac < 0.9):
            raise ValueError(f"val_frac and test_frac must be in (0, 1) and leave at least 10 % "
                             f"for training, got {d.val_frac!r} and {d.test_frac!r}")
        if t.k2 < t.k1:
            raise ValueError(f"k2 must be >= k1 (each update backpropagates k2 >= k1 steps), "
                             f"got k1={t.k1}, k2={t.k2}")
        if t.bptt == "truncated" and m.cell == "mlp":
            raise ValueError("bptt=truncated needs a recurrent cell (rnn, lstm, gru); "
                             "the mlp has no state to carry")
        if d.domain == "speech":
            self._validate_speech()
        return self

    def _validate_speech(self) -> None:
        sp = self.speech
        _choice("task", sp.task, ("classify", "forecast"))
        if sp.shift < 1:
            raise ValueError(f"shift must be >= 1, got {sp.shift!r}")
        _choice("split", sp.split, SPLITS)
        _choice("normalise", sp.normalise, ("global", "utterance"))
        if self.model.cell == "mlp":
            raise ValueError("domain=speech needs a recurrent cell (rnn, lstm, gru); the MLP "
                             "on mean-pooled features is trained as a baseline on every run")
        if sp.task == "classify" and self.train.bptt != "full":
            raise ValueError("task=classify trains by full BPTT over each utterance; "
                             "use bptt=full")
        self.audio.validate()

    def get(self, name: str):
        return self.flat()[name]

    def set(self, name: str, value) -> None:
        for part in self._parts():
            if name in {f.name for f in fields(part)}:
                setattr(part, name, _coerce(part, name, value))
                return
        raise ValueError(f"unknown parameter {name!r}; known: {sorted(self.flat())}")


@dataclass
class PredictConfig:
    """The `predict` step's parameters (batch forecasts, no training)."""

    model_uri: str = "models:/prices-returns-h1@champion"  # or models:/NAME/VERSION, runs:/ID/model
    input: str = "data/prices"  # CSV file, folder of CSV files, or Parquet file of prices
    output: str = "predictions.csv"  # .csv or .parquet; written atomically
    mode: str = "last"  # last (after the last price) or rolling (at every step)
    repair: str = "none"  # bad rows in the input: none (error), drop, ffill

    def validate(self) -> PredictConfig:
        from models.pyfunc import MODES

        _choice("mode", self.mode, MODES)
        _choice("repair", self.repair, REPAIRS)
        if Path(self.output).suffix not in (".csv", ".parquet"):
            raise ValueError(f"output must end in .csv or .parquet, got {self.output!r}")
        return self


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _coerce(part, name: str, value):
    kind = type(getattr(type(part)(), name))
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    try:
        if kind is int and isinstance(value, str | float):
            as_float = float(value)  # MLproject passes "20" or "20.0"
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}") from None


DEFAULTS = Config().flat()
PREDICT_DEFAULTS = {f.name: f.default for f in fields(PredictConfig)}
SWEEP_GRID = "cell=rnn,lstm,gru; bptt=full,truncated"  # the sweep entry point's `grid`


def build_config(overrides: dict | None = None) -> Config:
    """Defaults, then the values of the `preset` YAML file named in `overrides`, then the
    other overrides. An override equal to the built-in default does not undo a preset
    value: MLproject passes every parameter, so a default cannot be told apart from an
    explicit choice there."""
    overrides = dict(overrides or {})
    cfg = Config()
    preset = overrides.get("preset") or ""
    if preset:
        cfg.set("preset", preset)
        path = Path(preset) if Path(preset).exists() else ROOT / preset
        if not path.exists():
            raise FileNotFoundError(f"preset: {preset} does not exist")
        for name, value in (yaml.safe_load(path.read_text()) or {}).items():
            cfg.set(name, value)
    for name, value in overrides.items():
        if name != "preset" and (not preset or _coerce_default(name, value) != DEFAULTS[name]):
            cfg.set(name, value)
    return cfg.validate()


def from_params(params: dict[str, str]) -> Config:
    """The config of a logged run. Its params are already resolved, so a preset is not
    read again (its file may be gone). `mlflow run` logs values shell-quoted ('')."""
    def unquote(v: str) -> str:
        return shlex.split(v)[0] if len(v) >= 2 and v[0] == v[-1] == "'" else v

    return build_config({k: unquote(v) for k, v in params.items()
                         if k in DEFAULTS and k != "preset"})


def _coerce_default(name: str, value):
    probe = Config()
    probe.set(name, value)
    return probe.get(name)


def add_arguments(parser: argparse.ArgumentParser, names=None) -> None:
    """One --name option per config field (all of them, or `names`)."""
    for name, default in DEFAULTS.items():
        if names is None or name in names:
            parser.add_argument(f"--{name}", default=argparse.SUPPRESS,
                                help=f"default: {default!r}")


def from_args(args: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    return build_config(given)


def mlproject_parameters(names=None, defaults: dict = DEFAULTS) -> dict:
    """MLproject `parameters:` block for the given fields, defaults from the dataclasses."""
    kinds = {bool: "string", int: "float", float: "float", str: "string"}
    out = {}
    for name, default in defaults.items():
        if names is None or name in names:
            value = str(default).lower() if isinstance(default, bool) else default
            out[name] = {"type": kinds[type(default)], "default": value}
    return out


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--mlproject"]:
        from pipeline.entrypoints import render_mlproject

        print(render_mlproject(), end="")
    else:
        print(yaml.safe_dump(DEFAULTS, sort_keys=False), end="")
