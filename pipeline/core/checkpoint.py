"""Training checkpoints: `latest.pt` (everything needed to resume) and `best.pt` (the
weights of the best validation epoch), kept apart in one folder per MLflow run.

Each file is written to a temporary name in the same folder, flushed to disk and
then renamed over the old one, so a kill during the write leaves the previous
checkpoint intact. Files hold only tensors and plain Python values and are read
with `weights_only=True`: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from data_loaders.files import atomic_write

LATEST, BEST = "latest.pt", "best.pt"


class Checkpoints:
    """The checkpoint folder of one run; `every`: epochs between `latest` checkpoints
    (0: only on SIGTERM/SIGINT)."""

    def __init__(self, folder: str | Path, every: int = 1):
        self.folder, self.every = Path(folder), every

    def due(self, epochs_done: int) -> bool:
        return self.every > 0 and epochs_done % self.every == 0

    def save(self, name: str, payload: dict) -> Path:
        return atomic_write(self.folder / name, lambda tmp: torch.save(payload, tmp),
                            durable=True)

    def load(self, name: str = LATEST) -> dict:
        path = self.folder / name
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint {path}: nothing to resume (was the run "
                                    "trained with checkpoint_every > 0 on this machine?)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:  # truncated or not a checkpoint
            raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: "
                             f"{err}); it is damaged: delete it to train afresh") from None


def rng_states(generator: torch.Generator) -> dict:
    """Every random stream training draws from: Python's, NumPy's, torch's global ones
    (dropout, input noise; CPU and CUDA) and the shuffling generator."""
    np_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": {"key": torch.as_tensor(np_state["state"]["key"].astype(np.int64)),
                      "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                      "gauss": np_state["gauss"]},
            "torch": torch.get_rng_state(), "shuffle": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict, generator: torch.Generator) -> None:
    random.setstate(_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"],
                         "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(states["torch"])
    generator.set_state(states["shuffle"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _tuples(value):
    """random.setstate wants the nested tuples random.getstate gave."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
