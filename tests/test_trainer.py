"""The BPTT trainer: where gradients stop, smoke fits, determinism, stopping, clipping."""

import numpy as np
import pytest
import torch

from models.networks import Ensemble, RecurrentRegressor, build_model, init_weights
from pipeline import tasks
from pipeline.core.config import build_config
from pipeline.core.trainer import (
    NumericalFault,
    fit_streams,
    tbptt_updates,
    train_epoch,
    window_updates,
)
from tests.conftest import SPY

PRICES = tasks.load("prices")
SMALL = {"data": SPY, "start": "2012-01-01", "lookback": 16, "hidden": 8,
         "lanes": 4, "k1": 10, "k2": 20, "batch_size": 32, "epochs": 2}


def small(**overrides):
    cfg = build_config({**SMALL, **overrides})
    return cfg, PRICES.prepare(cfg)


def new_net(cfg, prep):
    torch.manual_seed(cfg.train.seed)
    spec = PRICES.network(cfg, prep)
    return build_model(spec["model"], spec["n_in"], spec["n_out"])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k1, k2", [(5, 5), (3, 7)])
def test_truncated_gradient_stops_k2_steps_back(cell, k1, k2):
    torch.manual_seed(0)
    net = RecurrentRegressor(2, 1, cell=cell, hidden=8)
    steps = 40
    x = torch.randn(1, steps, 2, requires_grad=True)
    y = torch.randn(1, steps, 1)
    *_, (pred, _) = tbptt_updates(net, x, y, k1, k2)  # the last update of the stream
    (grad,) = torch.autograd.grad(pred[0, -1].sum(), x)  # the loss at the last step
    per_step = grad[0].abs().sum(1)  # [T]
    back = per_step.flip(0)  # back[j]: input j steps before the last step
    assert (back[:k2] > 0).all(), back[:k2]
    assert (back[k2:] == 0).all()


def test_truncated_updates_put_a_loss_on_every_step_once():
    net = RecurrentRegressor(1, 1, cell="gru", hidden=4)
    y = torch.arange(23.0).reshape(1, 23, 1)
    targets = [t for _, t in tbptt_updates(net, torch.randn(1, 23, 1), y, 5, 12)]
    assert torch.equal(torch.cat(targets, 1), y)
    assert [t.shape[1] for t in targets] == [5, 5, 5, 5, 3]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_full_bptt_gradient_reaches_the_first_step(cell):
    torch.manual_seed(0)
    net = RecurrentRegressor(2, 1, cell=cell, hidden=8)
    x = torch.randn(6, 30, 2, requires_grad=True)
    pred, _ = next(window_updates(net, x, torch.randn(6, 1), 6, torch.Generator()))
    (grad,) = torch.autograd.grad(pred.sum(), x)
    assert (grad[:, 0].abs().sum(1) > 0).all()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mlp"])
@pytest.mark.parametrize("bptt", ["full", "truncated"])
@pytest.mark.slow
def test_two_epoch_smoke_fit(cell, bptt):
    if cell == "mlp" and bptt == "truncated":
        with pytest.raises(ValueError, match="needs a recurrent cell"):
            small(cell=cell, bptt=bptt)
        return
    cfg, prep = small(cell=cell, bptt=bptt)
    net = new_net(cfg, prep)
    before = [p.detach().clone() for p in net.parameters()]
    hist = fit_streams(net, prep.streams(), cfg.train, cfg.task.lookback, progress=False)
    assert len(hist.epochs) == 2
    assert all(np.isfinite([e["train_loss"], e["val_loss"], e["grad_norm"]]).all()
               for e in hist.epochs)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("bptt", ["full", "truncated"])
@pytest.mark.slow
def test_same_seed_same_metrics(bptt):
    runs = []
    for seed in (3, 3, 4):
        cfg, prep = small(bptt=bptt, seed=seed, input_noise=0.1, dropout=0.1, layers=2)
        hist = fit_streams(new_net(cfg, prep), prep.streams(), cfg.train, 16, progress=False)
        runs.append([{k: v for k, v in e.items() if not k.endswith("_seconds")}
                     for e in hist.epochs])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.slow
def test_early_stopping_on_target_loss_and_patience():
    cfg, prep = small(epochs=5, target_loss=100.0)
    hist = fit_streams(new_net(cfg, prep), prep.streams(), cfg.train, 16, progress=False)
    assert len(hist.epochs) == 1 and "reached 100.0" in hist.stop_reason
    cfg, prep = small(epochs=6, patience=1, lr=1.0, optimizer="sgd", clip=0.0)
    hist = fit_streams(new_net(cfg, prep), prep.streams(), cfg.train, 16, progress=False)
    assert len(hist.epochs) < 6 and hist.best_val_loss == min(e["val_loss"] for e in hist.epochs)


@pytest.mark.slow
def test_step_schedule_halves_the_learning_rate():
    cfg, prep = small(epochs=3, schedule="step", step_size=1, gamma=0.5, patience=0)
    hist = fit_streams(new_net(cfg, prep), prep.streams(), cfg.train, 16, progress=False)
    assert [e["lr"] for e in hist.epochs] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_clipping_bounds_the_step_and_reports_the_norm_before_it():
    torch.manual_seed(0)
    net = RecurrentRegressor(2, 1, hidden=8)
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    x, y = torch.randn(8, 10, 2), 100 * torch.randn(8, 1)
    stats = train_epoch(net, window_updates(net, x, y, 8, torch.Generator()), opt, clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert stats["grad_norm"] > 1.0  # the real norm, far above the clip
    assert (after - before).norm() <= 1e-3 * 1.0001


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
@pytest.mark.parametrize("init", ["orthogonal", "xavier", "gaussian", "uniform", "zeros"])
def test_norms_and_inits_build_and_run(norm, init):
    net = RecurrentRegressor(3, 2, cell="lstm", hidden=8, layers=2, norm=norm)
    init_weights(net, init)
    out, state = net(torch.randn(4, 7, 3))
    assert out.shape == (4, 7, 2) and len(state) == 2 and torch.isfinite(out).all()
    if init == "zeros":
        assert torch.equal(out, torch.zeros_like(out))
    if init == "orthogonal":
        w = net.cells[1].weight_hh_l0.detach()[:8]  # the input gate's block
        assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)


@pytest.mark.parametrize("views", [[], ["global", "utterance"]])
def test_a_forward_pass_keeps_no_tensor_on_the_network(views):
    # a server holding the network would keep its largest request's activations (here
    # once 120 MiB for 600 s of audio) until the next request
    members = [RecurrentRegressor(3, 2, cell="gru", hidden=8, bidirectional=True,
                                  readout="mean") for _ in views or [0]]
    net = (Ensemble(members, views) if views else members[0]).eval()
    net(torch.randn(2, 50, 3), lengths=torch.tensor([50, 30]))
    kept = [f"{name}.{k}" for name, m in net.named_modules() for k, v in vars(m).items()
            if isinstance(v, torch.Tensor)]
    assert kept == []
    out, _, hidden = members[0](torch.randn(2, 50, 3), with_hidden=True)
    assert hidden.shape == (2, 50, 16) and torch.allclose(members[0].head(hidden), out)


LR_TOO_HIGH = 10.0  # SGD: the gradient norm overflows within one epoch without clipping
TOO_HIGH = {"optimizer": "sgd", "momentum": 0.0, "lr": LR_TOO_HIGH, "epochs": 3, "patience": 0}


@pytest.mark.slow
def test_non_finite_loss_stops_naming_epoch_update_and_cause():
    cfg, prep = small(clip=0.0, **TOO_HIGH)
    net = new_net(cfg, prep)
    with pytest.raises(NumericalFault, match=r"non-finite .* at update \d+ of epoch \d+\. "
                                             r"Likely cause: clipping is off"):
        fit_streams(net, prep.streams(), cfg.train, 16, progress=False)
    assert all(torch.isfinite(p).all() for p in net.parameters())  # no step was taken


@pytest.mark.slow
def test_clipping_keeps_the_same_learning_rate_finite():
    cfg, prep = small(clip=1.0, **TOO_HIGH)
    hist = fit_streams(new_net(cfg, prep), prep.streams(), cfg.train, 16, progress=False)
    assert len(hist.epochs) == 3
    assert all(np.isfinite([e["train_loss"], e["val_loss"]]).all() for e in hist.epochs)


def test_memory_horizon_follows_the_recurrence():
    from pipeline.core.horizon import memory_horizon, state_gradient_norms

    torch.manual_seed(0)
    x, y = torch.randn(1, 30, 2), torch.randn(1)
    net = RecurrentRegressor(2, 1, cell="rnn", hidden=8)
    norms = state_gradient_norms(net, x, y, 20)
    assert norms.shape == (21,) and norms[0] > 0 and memory_horizon(norms) >= 1
    with torch.no_grad():
        net.cells[0].weight_hh_l0.zero_()  # no recurrence: nothing reaches back
    norms = state_gradient_norms(net, x, y, 20)
    assert norms[0] > 0 and (norms[1:] == 0).all() and memory_horizon(norms) == 0
    assert memory_horizon(np.array([1.0, 0.5, 0.02, 0.011, 0.009, 0.012])) == 5


def test_length_buckets_cover_every_sample_once_pad_less_and_resume_where_they_were():
    from pipeline.core.trainer import Cursor, batches

    lengths = torch.as_tensor(np.random.default_rng(0).integers(5, 200, 1000))
    plain = list(batches(1000, 10, torch.Generator().manual_seed(1)))
    bucketed = list(batches(1000, 10, torch.Generator().manual_seed(1), lengths=lengths))
    assert sorted(torch.cat(bucketed).tolist()) == list(range(1000))
    padded = lambda bs: sum(int(lengths[b].max()) * len(b) for b in bs)  # noqa: E731
    assert padded(bucketed) < 0.7 * padded(plain)
    again = list(batches(1000, 10, torch.Generator().manual_seed(1), lengths=lengths))
    assert all(torch.equal(a, b) for a, b in zip(bucketed, again, strict=True))
    later = list(batches(1000, 10, torch.Generator().manual_seed(1), Cursor(update=7),
                         lengths=lengths))
    assert all(torch.equal(a, b) for a, b in zip(later, bucketed[7:], strict=True))
    assert len(later) == len(bucketed) - 7
    other = list(batches(1000, 10, torch.Generator().manual_seed(2), lengths=lengths))
    assert not torch.equal(torch.cat(other), torch.cat(bucketed))
