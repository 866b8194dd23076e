"""Checkpoints: atomic writes, RNG round trips, and resuming to the same weights.

In-process tests here stop training with a real SIGTERM between two updates; the
subprocess SIGKILL tests (slow) are in test_resume.py.
"""

import random
import signal

import numpy as np
import pytest
import torch

from pipeline.core import trainer
from pipeline.core.checkpoint import BEST, LATEST, Checkpoints, rng_states, set_rng_states
from pipeline.core.signals import Interrupted
from pipeline.core.trainer import fit_streams
from tests.test_trainer import new_net, small

RESUMABLE = {"epochs": 4, "patience": 0, "dropout": 0.1, "layers": 2, "input_noise": 0.05,
             "schedule": "step", "step_size": 1}


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    ckpt = Checkpoints(tmp_path)
    ckpt.save(LATEST, {"epoch": 1, "w": torch.ones(3)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        ckpt.save(LATEST, {"epoch": 2, "w": torch.zeros(10_000), "boom": Unpicklable()})
    back = ckpt.load(LATEST)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [LATEST]  # no temporary file left


def test_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Checkpoints(tmp_path / "run").load()


def test_rng_states_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(1)
    Checkpoints(tmp_path).save(LATEST, {"rng": rng_states(gen)})
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    set_rng_states(Checkpoints(tmp_path).load()["rng"], gen)
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


def counting(monkeypatch, count: list, sigterm_at: int = 0, module=trainer):
    """The `fit` of `module` with its updates counted in count[0] over the whole run;
    SIGTERM is sent to this process as update `sigterm_at` is handed out."""
    real_fit = module.fit

    def wrap(updates):
        def counted(gen, cursor):
            for pair in updates(gen, cursor):
                count[0] += 1
                if count[0] == sigterm_at:
                    signal.raise_signal(signal.SIGTERM)
                yield pair
        return counted

    monkeypatch.setattr(module, "fit", lambda model, c, updates, *a, **k: real_fit(
        model, c, wrap(updates), *a, **k))


@pytest.mark.parametrize("bptt", ["full", "truncated"])
@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_same_weights(bptt, tmp_path, monkeypatch):
    cfg, prep = small(bptt=bptt, **RESUMABLE)
    plain, count = new_net(cfg, prep), [0]
    with monkeypatch.context() as m:
        counting(m, count)
        whole = fit_streams(plain, prep.streams(), cfg.train, 16, progress=False)
    per_epoch = count[0] // cfg.train.epochs
    assert per_epoch > 4

    ckpt = Checkpoints(tmp_path, every=2)
    counting(monkeypatch, [0], sigterm_at=2 * per_epoch + per_epoch // 2)  # inside epoch 2
    with pytest.raises(Interrupted, match="SIGTERM") as stopped:
        fit_streams(new_net(cfg, prep), prep.streams(), cfg.train, 16, progress=False,
                    checkpoints=ckpt)
    assert stopped.value.path == tmp_path / LATEST
    saved = ckpt.load()
    assert saved["epoch"] == 2 and saved["cursor"]["update"] == per_epoch // 2
    if bptt == "truncated":
        assert saved["cursor"]["state"] is not None  # the carried state is kept
    monkeypatch.undo()

    logged = []
    resumed = new_net(cfg, prep)
    hist = fit_streams(resumed, prep.streams(), cfg.train, 16, progress=False,
                       checkpoints=ckpt, resume=True, on_epoch=logged.append)
    for a, b in zip(plain.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # bitwise
    drop = ("epoch_seconds", "train_seconds")
    assert ([{k: v for k, v in e.items() if k not in drop} for e in hist.epochs]
            == [{k: v for k, v in e.items() if k not in drop} for e in whole.epochs])
    assert [m["epoch"] for m in logged] == [0, 1, 2, 3]  # done ones offered again, once
    best = ckpt.load(BEST)
    assert best["epoch"] == whole.best_epoch
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


@pytest.mark.parametrize("keep", [0, 10, 200, 0.5, 0.99])
def test_a_truncated_checkpoint_is_named_and_called_damaged(tmp_path, keep):
    ckpt = Checkpoints(tmp_path)
    path = ckpt.save(LATEST, {"epoch": 1, "w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError) as err:
        ckpt.load(LATEST)
    assert str(err.value).startswith(f"checkpoint {path} cannot be read")
    assert "it is damaged: delete it to train afresh" in str(err.value)


def test_a_file_written_atomically_gets_the_permissions_of_any_new_file(tmp_path):
    import os
    from pathlib import Path

    from data_loaders.files import atomic_write

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "out.csv", lambda tmp: Path(tmp).write_text("a\n"))
        assert (path.stat().st_mode & 0o777, path.read_text()) == (0o644, "a\n")
        os.umask(0o077)
        assert atomic_write(path, lambda tmp: Path(tmp).write_text("b\n")).stat().st_mode \
            & 0o777 == 0o600
    finally:
        os.umask(old)
    assert not list(tmp_path.glob(".*.tmp"))
