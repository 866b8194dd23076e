"""Stopping training by SIGTERM or SIGINT (Ctrl-C) without losing work.

While training, the signals only set a flag, read between two updates, so the
trainer can write a checkpoint before it stops; then it raises `Interrupted`, and
the step ends the MLflow run KILLED. No torch here: every step imports this.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(Exception):
    """SIGTERM or SIGINT during training; raised after the checkpoint is written."""

    def __init__(self, signum: int, path=None, what: str = "training"):
        self.signum, self.path = signum, path
        super().__init__(f"{what} stopped by {signal.Signals(signum).name}"
                         + (f"; checkpoint {path}" if path else ""))


class RankLost(ConnectionError):
    """Data-parallel training: a collective failed, because another rank died, hung past
    `dist_timeout` or left (pipeline/core/distributed.py). The run ends FAILED."""


@contextlib.contextmanager
def stop_signals(enabled: bool):
    """While training, SIGTERM and SIGINT only set a flag, read between updates, so the
    trainer can write a checkpoint before it stops. Yields a function giving the
    caught signal's number (0: none)."""
    caught: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    previous = {s: signal.signal(s, lambda signum, _: caught.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: caught[0] if caught else 0
    except RankLost:
        # torchrun sends SIGTERM to the ranks left as soon as one dies: ignore it, or it
        # would kill this one before its run is marked FAILED
        previous[signal.SIGTERM] = signal.SIG_IGN
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def sigterm_raises():
    """Outside training, SIGTERM raises Interrupted where the program is (evaluating,
    logging, registering), so the step can end its run KILLED and let go of a
    registration lock: Python's default would end the process at once, the run left
    RUNNING and the lock held. (torchrun sends SIGTERM to every rank when one fails.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _):
        raise Interrupted(signum, what="the step")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:  # unless training lost a rank and chose to ignore SIGTERM (stop_signals)
        if signal.getsignal(signal.SIGTERM) is interrupt:
            signal.signal(signal.SIGTERM, previous)
