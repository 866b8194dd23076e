"""The config: validation messages, presets, task parts, and names that stay unique."""

from dataclasses import fields

import numpy as np
import pandas as pd
import pytest

from data_loaders.sequences import TEST
from pipeline import tasks
from pipeline.core.config import build_config, from_params
from pipeline.core.params import COMMON, PRESETS


@pytest.mark.parametrize("overrides, message", [
    ({"cell": "transformer"}, "cell must be one of .* got 'transformer'"),
    ({"k1": 80, "k2": 40}, "k2 must be >= k1 .* got k1=80, k2=40"),
    ({"horizon": 0}, "horizon and lookback must be >= 1, got horizon=0"),
    ({"lr": "-1"}, r"lr must be > 0, got -1.0"),
    ({"epochs": "2.5"}, "epochs must be an int, got '2.5'"),
    ({"register": "maybe"}, "register must be true or false, got 'maybe'"),
    ({"bptt": "truncated", "cell": "mlp"}, "needs a recurrent cell"),
    ({"val_frac": 0.5, "test_frac": 0.45}, "leave at least 10 %"),
    ({"lookbak": 3}, "unknown parameter 'lookbak'; closest: lookback"),
    ({"shift": 3}, "shift is a parameter of task speech-forecast, not of task prices"),
    ({"task": "speech-classify", "lookback": 3}, "lookback is a parameter of task prices"),
    ({"task": "video"}, r"task must be one of \['prices', 'speech-classify', 'speech-forecast'\]"),
    ({"task": "speech-classify", "bptt": "truncated"}, "use bptt=full"),
    ({"task": "speech-classify", "cell": "mlp"}, "needs a recurrent cell"),
    ({"task": "speech-classify", "split": "by-day"}, "split must be one of"),
    ({"task": "speech-forecast", "features": "spectrum"}, "features must be one of"),
    ({"task": "speech-forecast", "shift": 0}, "shift must be >= 1"),
    ({"preset": "no-such-preset"}, "preset: no-such-preset is not a file .*volatility-tbptt"),
    ({"seed": "-1"}, "seed must be >= 0 and finite, got -1"),
    ({"momentum": "2"}, r"momentum must be in \[0, 1\), got 2.0"),
    ({"gamma": "5"}, r"gamma must be in \(0, 1\]"),
    ({"clip": "inf"}, "clip must be >= 0 and finite, got inf"),
    ({"checkpoint_dir": ""}, "checkpoint_dir must not be empty"),
    ({"registered_model": "a/b"}, "registered_model: 'a/b' is not a usable name"),
    ({"registered_model": "prices.lock"}, "end in '.lock'"),
    ({"registered_model": "m" * 252}, r"'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm'\.\.\. \(252 "
     r"characters\) is not a usable name: .* longer than 251 characters"),
    ({"start": "2015-13-45"}, r"start: cannot read '2015-13-45' as a date \(YYYY-MM-DD\)"),
    ({"start": "2015-01-01", "end": "2010-01-01"}, r"start \(2015-01-01\) is after end"),
    ({"data": "x.csv", "tickers": "SPY"}, "data and tickers: give one"),
    ({"val_start": "2016-01-04"}, "val_start and test_start: give both .* or neither"),
    ({"val_start": "2019-01-02", "test_start": "2016-01-04"},
     r"val_start \(2019-01-02\) must be before test_start \(2016-01-04\)"),
    ({"aci": 1.5}, r"aci: the step gamma .* must be in \[0, 1\)"),
    ({"aci": 0.005}, r"aci: adapts the model's central intervals .* loss=mse, quantiles="),
    ({"aci": 0.005, "loss": "quantile", "quantiles": "0.1,0.5,0.8"},
     r"loss=quantile, quantiles='0.1,0.5,0.8' have none"),
    ({"fold": 1}, "fold: runs one fold k of folds=K .* got fold=1 with folds=1"),
    ({"test_start": "2019-02-30", "val_start": "2016-01-04"}, "test_start: cannot read"),
    ({"select": "qlike"}, "select=qlike .* needs target=volatility and loss=gaussian, got "
     "target=returns, loss=mse"),
    ({"calibrate": "true", "loss": "quantile"}, "calibrate: .* loss=quantile learns its own"),
    ({"split": "ticker"}, "split=ticker needs folds >= 2"),
    ({"loss": "gaussian", "quantiles": "0.5,0.2"}, "quantiles: expected ascending numbers"),
    ({"quantiles": "1.5"}, "strictly between 0 and 1, each once, got '1.5'"),
    ({"task": "speech-classify", "features": "mfcc", "n_mfcc": 100},
     r"n_mfcc \(100\) must not exceed n_mels \(40\)"),
])
def test_bad_values_are_named_and_quoted(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(overrides)


def test_text_values_are_coerced():
    cfg = build_config({"epochs": "20.0", "lr": "0.01", "refresh": "true", "hidden": "16"})
    assert (cfg.train.epochs, cfg.train.lr, cfg.task.refresh, cfg.model.hidden) == \
        (20, 0.01, True, 16)


def test_each_task_has_only_its_own_parameters_and_defaults_resolved():
    common = {f.name for cls in COMMON.values() for f in fields(cls)}
    for name in tasks.TASKS:
        cfg = build_config({"task": name})
        own = {f.name for f in fields(tasks.load(name).Params)}
        assert set(cfg.flat()) == common | own
        assert cfg.tracking.experiment == name
    assert build_config({"target": "volatility", "horizon": 5}).tracking.registered_model == \
        "prices-volatility-h5"
    assert build_config({"task": "speech-forecast"}).tracking.registered_model == \
        "speech-forecast"
    assert "lookback" not in build_config({"task": "speech-classify"}).flat()


def test_preset_under_explicit_values_even_when_they_equal_the_default(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("cell: gru\nhidden: 64\nepochs: 7\n")
    # epochs=20 is the built-in default, given explicitly: it wins over the preset
    cfg = build_config({"preset": str(preset), "hidden": "16", "epochs": "20"})
    assert (cfg.model.cell, cfg.model.hidden, cfg.train.epochs) == ("gru", 16, 20)


def test_a_preset_chooses_its_task_and_is_found_by_name():
    cfg = build_config({"preset": "speech-fsdd"})
    assert cfg.task_name == "speech-classify" and cfg.model.cell == "gru"
    assert cfg.tracking.preset == "speech-fsdd"
    with pytest.raises(ValueError, match="preset speech-fsdd: bidirectional is a parameter of "
                                         "task speech-classify, not of task speech-forecast"):
        build_config({"preset": "speech-fsdd", "task": "speech-forecast"})


def test_bundled_presets_are_valid():
    presets = sorted(PRESETS.glob("*.yaml"))
    assert len(presets) >= 4
    for p in presets:
        build_config({"preset": str(p)})
        build_config({"preset": p.stem})


def test_field_names_are_unique_across_the_common_parts_and_every_task():
    for name in tasks.TASKS:
        names = [f.name for cls in (*COMMON.values(), tasks.load(name).Params)
                 for f in fields(cls)]
        assert len(names) == len(set(names)), name


def test_choices_agree_with_the_modules_that_use_them():
    """The config lists allowed values without importing torch or pandas; these are the
    lists the networks and loaders act on."""
    from data_loaders import audio, prices
    from models import networks
    from models.price_model import MODES
    from pipeline.predict import PredictParams

    def choices(cls, name):
        return next(f.metadata["choices"] for f in fields(cls) if f.name == name)

    model, price = COMMON["model"], tasks.load("prices").Params
    assert set(choices(model, "cell")) == {*networks.CELLS, "mlp"}
    assert choices(model, "norm") == networks.NORMS and choices(model, "init") == networks.INITS
    assert choices(price, "repair") == prices.REPAIRS == choices(PredictParams, "repair")
    assert choices(price, "target") == prices.TARGETS
    assert choices(PredictParams, "mode") == MODES
    speech = tasks.load("speech-classify").Params
    assert choices(speech, "split") == audio.SPLITS and choices(speech, "features") == \
        audio.FEATURES


def test_params_round_trip_including_mlflow_run_quoting(tmp_path):
    cfg = build_config({"refresh": True, "data": "my prices.csv"}, base=tmp_path)
    params = cfg.params()
    assert params["refresh"] == "true" and params["data"] == "my prices.csv"
    params["data"] = "'my prices.csv'"  # how `mlflow run` logs a value that needs quoting
    params["start"] = "''"
    again = from_params(params, base=tmp_path)
    assert again.flat() == cfg.flat() and again.path(again.data.data) == tmp_path / "my prices.csv"


def test_a_logged_run_does_not_need_its_preset_file(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("cell: gru\nhidden: 64\n")
    params = build_config({"preset": str(preset)}).params()
    preset.unlink()
    cfg = from_params(params)
    assert (cfg.model.cell, cfg.model.hidden, cfg.tracking.preset) == ("gru", 64, str(preset))


def test_reference_table_lists_every_parameter_of_every_task():
    from pipeline.core.config import reference_table

    table = reference_table()
    for name in tasks.TASKS:
        for f in fields(tasks.load(name).Params):
            assert f"| `{f.name}` |" in table
    assert "| `shift` | speech-forecast | `3` |" in table
    assert "| `split` | speech-classify |" in table  # shared speech params: listed once


def test_an_error_in_a_preset_names_the_preset(tmp_path):
    preset = tmp_path / "mine.yaml"
    for text, message in [("bogus_key: 3\n", "unknown parameter 'bogus_key'"),
                          ("hidden: abc\n", "hidden must be an int, got 'abc'"),
                          ("shift: 5\n", "shift is a parameter of task speech-forecast")]:
        preset.write_text(text)
        with pytest.raises(ValueError, match=f"^preset {preset}: {message}"):
            build_config({"preset": str(preset)})
    preset.write_bytes(b"RIFF\x80\x81\x82binary")
    with pytest.raises(ValueError, match="is not a text \\(YAML\\) file"):
        build_config({"preset": str(preset)})


def test_more_walk_forward_folds_than_the_test_days_hold_are_refused_before_any_fold():
    cfg = build_config({"folds": 300})
    with pytest.raises(ValueError, match=r"folds: 300 blocks of the \d+ test days "
                                         r"\(test_frac=0.15\) are 4 days each; a block needs "
                                         r"20 or more: at most folds=62"):
        tasks.load("prices").folds(cfg)
    with pytest.raises(ValueError, match="folds: 300 blocks"):  # one block alone, too
        tasks.load("prices").prepare(build_config({"folds": 300, "fold": 3}))
    assert len(tasks.load("prices").folds(build_config({"folds": 62}))) == 62


def test_walk_forward_from_test_start_runs_calendar_years_each_seeing_only_its_past():
    dates = {"val_start": "2011-01-03", "test_start": "2014-01-02"}
    with pytest.raises(ValueError, match=r"folds: block 6, the year from 2019-01-01, has 0 test "
                                         r"days \(the data run from 1986-03-1\d to 2018-12-3\d\); "
                                         r"at most folds=5 yearly blocks from "
                                         r"test_start=2014-01-02"):
        tasks.load("prices").folds(build_config({**dates, "folds": 6}))
    with pytest.raises(ValueError, match="folds: block 6"):  # a fold alone is checked too
        tasks.load("prices").prepare(build_config({**dates, "folds": 6, "fold": 2}))
    late = {"val_start": "2011-12-20", "test_start": "2013-12-27", "folds": 3}
    with pytest.raises(ValueError, match=r"test_start: the first yearly block, 2013-12-27 to the "
                                         r"end of 2013, has 3 test days .* needs 20 or more"):
        tasks.load("prices").folds(build_config(late))
    assert len(tasks.load("prices").folds(build_config({**dates, "folds": 5}))) == 5
    data = tasks.load("prices").prepare(build_config({**dates, "folds": 5, "fold": 2}))
    # validated on as many calendar days before its year as val_start..test_start
    assert [str(c.date()) for c in data.cutoffs] == ["2012-01-02", "2015-01-01", "2016-01-01"]
    assert max(f.index.max() for f in data.frames.values()) < pd.Timestamp("2016-01-01")
    test_days = np.concatenate([d[s == TEST] for d, s in zip(data.dates, data.split,
                                                                    strict=True)])
    # forecasts made from the last day of 2014 (their targets start in 2015) through 2015
    assert "2014-12-30" <= str(test_days.min())[:10] and str(test_days.max())[:4] == "2015"
