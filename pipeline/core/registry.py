"""The Model Registry rules.

- A registered name belongs to one task, one target and one input schema (kept as
  the registered model's tags `task`, `target`, `inputs`); a model that differs in
  any is refused, with what differs.
- `@champion` moves to a new version only when it beats the champion on the same
  validation samples: both are scored on the new run's validation split, from raw
  inputs through their own preprocessing (the task's `validation_scores`, whose
  requests are split into calls the served models take whole), and the new score is
  lower by more than RTOL of the champion's. Closer is a tie, and a tie keeps the
  champion: the same model trained again, or on two ranks, differs by rounding only.
- A run registers once per name: registering it again names its version and adds none.
- One registration at a time per name: the compare-and-move holds a lock, the
  registered model `NAME.lock`, which only one process can create (the tracking
  backend's unique names: SQLite, PostgreSQL or a tracking server alike). A lock
  older than STALE_S (a register that crashed) is broken.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from typing import NamedTuple

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
RTOL = 1e-4  # a challenger must score lower than the champion by more than this, relatively
STALE_S = 600.0  # a lock held this long belongs to a register that died
WAIT_S = 900.0  # give up waiting for the lock after this long
# Taken; or freed between MLflow's failed insert and its look-up; or the database busy.
RETRY = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "TEMPORARILY_UNAVAILABLE")


@contextlib.contextmanager
def locked(name: str):
    """Hold the registration lock of `name` while the block runs."""
    client, lock = MlflowClient(), f"{name}.lock"
    deadline, waiting = time.monotonic() + WAIT_S, False
    while True:
        try:
            client.create_registered_model(
                lock, tags={"since": str(time.time()),
                            "holder": f"{socket.gethostname()}:{os.getpid()}"},
                description=f"held while a version of {name} is registered; deleted after")
            break
        except MlflowException as err:
            if err.error_code not in RETRY:
                raise
            since = _lock_since(client, lock)
            if since is not None and time.time() - since > STALE_S:
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model(lock)
                continue
            if time.monotonic() > deadline:
                raise ValueError(f"registered_model: {lock} has been held for "
                                 f"{time.time() - (since or time.time()):.0f} s; if no "
                                 "register is running, delete that registered model") from None
            if not waiting:
                print(f"waiting for the registration lock of {name}", flush=True)
                waiting = True
            time.sleep(random.uniform(0.05, 0.3))
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def _lock_since(client: MlflowClient, lock: str) -> float | None:
    try:
        return float(client.get_registered_model(lock).tags.get("since", "nan"))
    except MlflowException:
        return None


def identity(task, spec: dict) -> dict[str, str]:
    """What must agree under one registered name: task, target, input columns."""
    served = task.served_model()
    inputs = [c for c in served.signature(spec).inputs.input_names()
              if c not in served.carried]  # what carries a stream is not the data
    return {"task": spec["task"], "target": task.target(spec), "inputs": ",".join(inputs)}


def check_compatible(name: str, ident: dict[str, str]) -> None:
    """Refuse a model whose task, target or inputs differ from the name's. A new name,
    or one registered before these tags were kept, takes this model's."""
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException:
        return
    if not tags.get("task"):
        return
    held = {k: tags.get(k, "(not recorded)") for k in ident}
    differs = [f"{k} {ident[k]!r} (it holds {held[k]!r})" for k in ident if held[k] != ident[k]]
    if differs:
        raise ValueError(f"registered_model: {name} holds other models; this one differs in "
                         + "; ".join(differs)
                         + ". Register it under another name (registered_model=...)")


def champion_version(name: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


class Registration(NamedTuple):
    version: str
    champion: bool  # the version is @champion
    why: str  # the comparison it went through
    added: bool = True  # False: the run was a version of the name already


def register(task, cfg, run_id: str, model_uri: str, challenger, data_fn,
             tags: dict[str, str]) -> Registration:
    """Register `model_uri` (the run's served model, loaded as `challenger`) under
    cfg.tracking.registered_model, unless the run is a version of it already; move
    @champion to it when it beats the champion on this run's validation data
    (`data_fn()` prepares it)."""
    name, client = cfg.tracking.registered_model, MlflowClient()
    ident = identity(task, challenger.spec)
    with locked(name):
        current = champion_version(name)
        if done := registered_version(name, run_id):
            return Registration(done, done == current, "", added=False)
        check_compatible(name, ident)
        scores, why = None, "the first version"
        if current is not None:
            scores, why = _compare(task, cfg, run_id, challenger, name, current, data_fn)
        version = str(mlflow.register_model(model_uri, name).version)
        for key, value in ident.items():
            client.set_registered_model_tag(name, key, value)
        for key, value in {**tags, "run_id": run_id, "champion_check": why,
                           "champion_rtol": RTOL}.items():
            client.set_model_version_tag(name, version, key, str(value))
        if scores:
            client.set_model_version_tag(name, version, f"val_{task.score_name}", scores[0])
        promoted = current is None or bool(scores and beats(*scores))
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        return Registration(version, promoted, why)


def registered_version(name: str, run_id: str) -> str | None:
    """The version of `name` that holds run `run_id`'s model, if one does."""
    found = [v for v in MlflowClient().search_model_versions(f"run_id = '{run_id}'")
             if v.name == name]
    return str(min(int(v.version) for v in found)) if found else None


def beats(challenger: float, champion: float) -> bool:
    """Lower by more than rounding noise (RTOL of the champion's score)."""
    return challenger < champion - RTOL * abs(champion)


def shown(a: float, b: float) -> tuple[str, str]:
    """Two scores with the digits it takes to tell them apart (6 when equal)."""
    digits = next((d for d in range(6, 18) if f"{a:.{d}g}" != f"{b:.{d}g}"), 6)
    return f"{a:.{digits}g}", f"{b:.{digits}g}"


def _compare(task, cfg, run_id: str, challenger, name: str, current: str, data_fn):
    """Both models' scores on the run's validation split, and a sentence saying how they
    compare; (None, why) when the champion cannot be scored on this data (an older
    model, say): then the alias stays, and the version's tag says so."""
    from pipeline.core.tracking import load_served

    data = data_fn()
    try:
        champion = load_served(f"models:/{name}/{current}", "champion")
        scores = task.validation_scores([challenger, champion], cfg, data)
    except Exception as err:  # noqa: BLE001 - any failure means: no fair comparison
        task.validation_scores([challenger], cfg, data)  # the new model's own fault: raise
        why = (f"not compared: version {current} could not be scored on run {run_id}'s "
               f"validation data ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
               "@champion stays")
        return None, why
    new, old = shown(*scores)
    lower = (scores[1] - scores[0]) / abs(scores[1]) if scores[1] else 0.0
    head = f"validation {task.score_name} {new}"
    tail = f"version {current}'s {old} on run {run_id}'s validation split"
    if beats(*scores):
        return scores, f"{head} beats {tail} ({100 * lower:.3g} % lower)"
    tie = "" if scores[0] > scores[1] else (
        f": {lower:.2g} lower, within the relative tolerance {RTOL:g}" if lower
        else ": equal") + "; a tie keeps @champion"
    return scores, f"{head} does not beat {tail}{tie}"
