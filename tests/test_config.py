"""The config: validation messages, presets, and names that stay unique."""

import pytest

from pipeline.config import DEFAULTS, Config, build_config, from_params


@pytest.mark.parametrize("overrides, message", [
    ({"cell": "transformer"}, "cell must be one of .* got 'transformer'"),
    ({"k1": 80, "k2": 40}, "k2 must be >= k1 .* got k1=80, k2=40"),
    ({"horizon": 0}, "horizon must be >= 1, got 0"),
    ({"lr": "-1"}, r"lr must be > 0, got -1.0"),
    ({"epochs": "2.5"}, "epochs must be a int, got '2.5'"),
    ({"register": "maybe"}, "register must be true or false, got 'maybe'"),
    ({"bptt": "truncated", "cell": "mlp"}, "needs a recurrent cell"),
    ({"val_frac": 0.5, "test_frac": 0.45}, "leave at least 10 %"),
    ({"lookbak": 3}, "unknown parameter 'lookbak'"),
])
def test_bad_values_are_named_and_quoted(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(overrides)


def test_mlproject_strings_are_coerced():
    cfg = build_config({"epochs": "20.0", "lr": "0.01", "refresh": "true", "hidden": "16"})
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.refresh, cfg.model.hidden) == \
        (20, 0.01, True, 16)


def test_preset_under_explicit_values(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("cell: gru\nhidden: 64\nepochs: 7\n")
    # epochs=20 is the default, as MLproject always passes it: it does not undo the preset
    cfg = build_config({"preset": str(preset), "hidden": "16", "epochs": "20"})
    assert (cfg.model.cell, cfg.model.hidden, cfg.train.epochs) == ("gru", 16, 7)


def test_bundled_presets_are_valid():
    from pathlib import Path

    presets = sorted(Path("presets").glob("*.yaml"))
    assert presets
    for p in presets:
        build_config({"preset": str(p)})


def test_field_names_are_unique_across_the_tree():
    names = [f for part in Config()._parts() for f in part.__dataclass_fields__]
    assert len(names) == len(set(names)) == len(DEFAULTS)


def test_params_round_trip_including_mlflow_run_quoting():
    cfg = build_config({"cell": "gru", "tickers": "SPY,AAPL", "refresh": True})
    params = cfg.params()
    assert params["refresh"] == "true"
    params["start"] = "''"  # how `mlflow run` logs an empty string
    assert from_params(params).flat() == cfg.flat()


def test_a_logged_run_does_not_need_its_preset_file(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("cell: gru\nhidden: 64\n")
    params = build_config({"preset": str(preset)}).params()
    preset.unlink()
    cfg = from_params(params)
    assert (cfg.model.cell, cfg.model.hidden) == ("gru", 64)
