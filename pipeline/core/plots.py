"""Figures logged with every run (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def log_figure(fig, path: str) -> None:
    """Log into the active run and free the figure (pyplot keeps every open one)."""
    import mlflow

    mlflow.log_figure(fig, path)
    plt.close(fig)


def loss_curves(epochs: list[dict], loss_name: str = "MSE (normalised units)"):
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [e["epoch"] for e in epochs]
    ax.plot(x, [e["train_loss"] for e in epochs], label="train")
    ax.plot(x, [e["val_loss"] for e in epochs], label="validation")
    ax.set(xlabel="epoch", ylabel=loss_name, title="Loss per epoch")
    ax.legend()
    fig.tight_layout()
    return fig


def gradient_horizon(norms, horizon: int, threshold: float):
    """|d loss_T / d state_{T-1-k}| relative to k = 0, on a log scale."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(np.arange(len(norms)), norms / norms[0])
    ax.axhline(threshold, color="0.5", ls="--", lw=0.8, label=f"{threshold:.0%} of k = 0")
    ax.axvline(horizon, color="C3", lw=0.8, label=f"memory horizon: {horizon} steps")
    ax.set(xlabel="k (steps back)", ylabel="gradient norm / norm at k = 0",
           title="How far back the gradient of the last loss reaches")
    ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(matrix, classes: list[str]):
    """Counts, true class down, predicted class across."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
           yticklabels=classes, xlabel="predicted", ylabel="true", title="Test confusion matrix")
    fig.tight_layout()
    return fig


def forecast_vs_actual(dates, actual, model, baseline, baseline_name: str, title: str,
                       band: tuple | None = None):
    """The realised values, the model's and a baseline's forecasts and, with `band`
    (lower, upper, label), the model's interval around them."""
    fig, ax = plt.subplots(figsize=(10, 4))
    if band is not None:
        ax.fill_between(dates, band[0], band[1], color="C1", alpha=0.2, lw=0, label=band[2])
    ax.plot(dates, actual, lw=0.8, color="0.5", label="actual")
    ax.plot(dates, baseline, lw=1.0, label=baseline_name)
    ax.plot(dates, model, lw=1.0, label="model")
    ax.set(title=title, xlabel="date")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def ratio_by_series(names, ratios, baseline: str, p_values=None,
                    significant: float | None = None):
    """Each series' test loss of the model over a baseline's, sorted: below 1 the model
    is ahead on that series. With each series' Diebold-Mariano `p_values`, a series
    behind by more than noise (p < `significant`) is drawn apart from one behind within it."""
    order = np.argsort(ratios)
    ratios = np.asarray(ratios)[order]
    behind = ratios >= 1
    real = behind & (np.asarray(p_values)[order] < significant if p_values is not None
                     else True)
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(ratios))
    ax.bar(x[~behind], ratios[~behind], width=1.0, color="C0", label="model ahead")
    if p_values is not None:
        ax.bar(x[behind & ~real], ratios[behind & ~real], width=1.0, color="C1",
               label=f"behind, within the noise (DM p >= {significant:g})")
    ax.bar(x[real], ratios[real], width=1.0, color="C3",
           label="behind" if p_values is None else f"behind (DM p < {significant:g})")
    ax.axhline(1.0, color="0.3", lw=0.8)
    if len(ratios) <= 40:
        ax.set_xticks(x, np.asarray(names)[order], rotation=90)
    title = f"test QLIKE, model / {baseline}, per series: model ahead on {np.mean(~behind):.0%}"
    if p_values is not None:
        title += f", behind by more than noise on {np.mean(real):.0%}"
    ax.set(title=title, xlabel=f"{len(ratios)} series, sorted", ylabel=f"model / {baseline}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def sweep_comparison(table, curves: dict[str, list[float]]):
    """Left: every run's validation loss per epoch; right: best validation loss per run
    (best at the top), its memory horizon written beside the bar when there is one."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.9 + 0.35 * max(len(table), 4)))
    for name, curve in curves.items():
        left.plot(range(len(curve)), curve, marker=".", label=name)
    left.set(xlabel="epoch", ylabel="validation loss", title="Validation loss per epoch")
    left.legend(fontsize=7)
    done = table.dropna(subset=["best_val_loss"])[::-1]
    right.barh(done["run_name"], done["best_val_loss"], color="C0")
    lo = done["best_val_loss"].min()
    right.set_xlim(lo - 0.1 * (done["best_val_loss"].max() - lo + 1e-12), None)
    if "memory_horizon" in done:
        for y, (loss, reach) in enumerate(zip(done["best_val_loss"], done["memory_horizon"],
                                              strict=True)):
            if reach == reach:  # not NaN
                right.text(loss, y, f" horizon {reach:.0f}", va="center", fontsize=7)
    right.set(xlabel="best validation loss", title="Runs, best first")
    fig.tight_layout()
    return fig
