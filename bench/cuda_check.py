"""The CUDA path, for a machine with a GPU (CI has none): the trainer with cuDNN's
recurrent layers (GRU hidden 32, full BPTT over windows of 64 and truncated
BPTT(25, 50) over 16 lanes, 5-day volatility on all bundled tickers, 3 epochs) against
the same training on the CPU, and DistributedDataParallel over NCCL under torchrun.

    python -m bench.cuda_check                                    # CPU vs CUDA
    torchrun --standalone --nproc_per_node=N -m bench.cuda_check  # NCCL, N ranks

One process: each mode's validation loss per epoch on both devices and their largest
relative difference (float32 on two devices: close, not equal), the training seconds
per epoch, and RESULT the largest relative difference of the final validation losses.
Under torchrun: the process group's backend and the truncated run's validation losses
beside the one-process CUDA run's (saved by the first command in bench/out/), RESULT
their largest relative difference. No MLflow: the trainer alone.
"""

from __future__ import annotations

import json
import os
import time

import torch

from bench.common import result
from models.networks import build_model
from pipeline import tasks
from pipeline.core import distributed
from pipeline.core.config import build_config
from pipeline.core.params import ROOT
from pipeline.core.trainer import fit

CONFIG = {"target": "volatility", "horizon": "5", "cell": "gru", "hidden": "32",
          "epochs": "3", "patience": "0", "lr": "0.003"}
MODES = {"full": {"bptt": "full", "lookback": "64", "batch_size": "256"},
         "truncated": {"bptt": "truncated", "k1": "25", "k2": "50", "lanes": "16"}}
SAVED = ROOT / "bench" / "out" / "cuda_check.json"


def train(mode: str, device: str) -> dict:
    cfg = build_config({**CONFIG, **MODES[mode], "device": device})
    task = tasks.load("prices")
    data = task.prepare(cfg)
    torch.manual_seed(cfg.train.seed)
    spec = task.network(cfg, data)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"]).to(device)
    model = distributed.wrap(net)
    goal = task.objective(cfg, data, model)
    epochs = []
    hist = fit(model, cfg.train, goal.updates, goal.validate, goal.loss_fn,
               on_epoch=epochs.append, progress=False)
    return {"val": [e["val_loss"] for e in hist.epochs],
            "seconds": [round(e["train_seconds"], 3) for e in epochs]}


def rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def one_process() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN "
          f"{torch.backends.cudnn.version()}")
    worst, saved = 0.0, {}
    for mode in MODES:
        t0 = time.perf_counter()
        cpu = train(mode, "cpu")
        t1 = time.perf_counter()
        gpu = saved[mode] = train(mode, "cuda")
        t2 = time.perf_counter()
        worst = max(worst, rel(gpu["val"][-1:], cpu["val"][-1:]))
        print(f"{mode}: val loss CPU {cpu['val']} ({t1 - t0:.1f} s), CUDA {gpu['val']} "
              f"({t2 - t1:.1f} s); train seconds per epoch CPU {cpu['seconds']}, CUDA "
              f"{gpu['seconds']}; largest relative difference {rel(gpu['val'], cpu['val']):.2e}",
              flush=True)
    SAVED.parent.mkdir(exist_ok=True)
    SAVED.write_text(json.dumps(saved))
    result("cuda_vs_cpu_final_val_loss_rel_diff", worst, "<=", 0.02)


def under_torchrun() -> None:
    distributed.setup("cuda", 120)
    got = train("truncated", "cuda")
    if distributed.is_main():
        print(f"backend {torch.distributed.get_backend()}, {distributed.size()} rank(s): "
              f"val loss {got['val']}, train seconds per epoch {got['seconds']}")
        if SAVED.exists():
            one = json.loads(SAVED.read_text())["truncated"]["val"]
            print(f"one process on CUDA: {one}")
            result("ddp_nccl_vs_one_process_val_loss_rel_diff", rel(got["val"], one), "<=",
                   1e-4)
    distributed.teardown()


if __name__ == "__main__":
    under_torchrun() if "LOCAL_RANK" in os.environ else one_process()
