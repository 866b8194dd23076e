"""Task `speech-classify`: an utterance's frames -> its label (spoken digits, words).

Training: full BPTT over each utterance, batches zero-padded after each end and
the class read at the last frame (so padding cannot change a prediction),
cross-entropy; `val_accuracy` is logged per epoch. Test: accuracy and macro-F1
beside the majority class and an MLP on mean-pooled features (trained by the same
loop), and the confusion matrix. Served by models/speech_model.py from audio.
"""

from __future__ import annotations

import numpy as np

from data_loaders.sequences import TEST, TRAIN, VAL
from pipeline.config import Config
from pipeline.tasks import Evaluation, Objective
from pipeline.tasks.speech import SpeechData, SpeechTask


class SpeechClassifyTask(SpeechTask):
    name = "speech-classify"
    served = "SpeechClassifier"
    score_name = "log_loss"

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        if cfg.train.bptt != "full":
            raise ValueError(f"task={self.name} trains by full BPTT over each utterance; "
                             "use bptt=full")

    def network(self, cfg: Config, data: SpeechData) -> dict:
        return {**super().network(cfg, data), "n_out": len(data.classes),
                "classes": data.classes}

    def objective(self, cfg: Config, data: SpeechData, net) -> Objective:
        from torch import nn

        from models.networks import logits
        from pipeline.trainer import utterance_updates

        device = next(net.parameters()).device
        xt, lt, yt = data.padded(TRAIN)
        xv, lv, yv = data.padded(VAL)
        xt, yt, xv, yv = xt.to(device), yt.to(device), xv.to(device), yv.to(device)
        t = cfg.train

        def updates(gen, cursor):
            return utterance_updates(net, xt, lt, yt, t.batch_size, gen, t.input_noise,
                                     cursor=cursor)

        def validate() -> dict:
            out = logits(net, xv, lv)
            return {"val_loss": nn.functional.cross_entropy(out, yv).item(),
                    "val_accuracy": float((out.argmax(1) == yv).float().mean())}

        return Objective(updates, validate, nn.functional.cross_entropy, "cross-entropy")

    def horizon(self, net, cfg: Config, data: SpeechData):
        import torch
        from torch import nn

        def example(i):
            return torch.as_tensor(data.x[i])[None], torch.tensor(data.y[i])

        return self.memory_horizon(net, data, example, nn.functional.cross_entropy)

    def evaluate(self, net, cfg: Config, data: SpeechData) -> Evaluation:
        from models.networks import logits
        from pipeline import plots
        from pipeline.metrics import classification_scores, confusion

        x, lengths, y = data.padded(TEST)
        pred, true, n = logits(net, x, lengths).argmax(1).numpy(), y.numpy(), len(data.classes)
        majority = np.bincount(data.y[data.split == TRAIN], minlength=n).argmax()
        table = {"model": classification_scores(pred, true, n),
                 "majority": classification_scores(np.full_like(true, majority), true, n),
                 "mlp_mean_pooled": classification_scores(mlp_baseline(cfg, data), true, n)}
        figure = plots.confusion_matrix(confusion(pred, true, n), data.classes)
        return Evaluation(table, {"plots/confusion.png": figure})

    def target(self, spec: dict) -> str:
        return "classes " + ",".join(spec["classes"])

    def validation_scores(self, models: list, cfg: Config, data: SpeechData) -> list[float]:
        """Log loss (mean -log p of the true label) of each served model on the
        validation files, from their audio."""
        request = data.requests(VAL)
        true = [data.classes[c] for c in data.y[data.split == VAL]]
        scores = []
        for model in models:
            got = model.predict(None, request)
            p = got.to_dict("records")
            scores.append(float(np.mean([-np.log(max(r[f"p_{c}"], 1e-12))
                                         for r, c in zip(p, true, strict=True)])))
        return scores


def mlp_baseline(cfg: Config, data: SpeechData) -> np.ndarray:
    """Test predictions of an MLP on mean-pooled features, trained with the same loop."""
    import torch
    from torch import nn

    from pipeline.trainer import batches, fit, seed_everything

    seed_everything(cfg.train.seed)
    pooled = torch.as_tensor(np.stack([x.mean(0) for x in data.x]))
    y = torch.as_tensor(data.y)
    sel = {s: torch.as_tensor(np.flatnonzero(data.split == s)) for s in (TRAIN, VAL, TEST)}
    net = nn.Sequential(nn.Linear(pooled.shape[1], cfg.model.hidden), nn.Tanh(),
                        nn.Linear(cfg.model.hidden, len(data.classes)))

    def updates(gen, cursor):
        for idx in batches(len(sel[TRAIN]), cfg.train.batch_size, gen, cursor):
            yield net(pooled[sel[TRAIN][idx]]), y[sel[TRAIN][idx]]

    def validate() -> dict:
        with torch.no_grad():
            return {"val_loss": nn.functional.cross_entropy(net(pooled[sel[VAL]]),
                                                            y[sel[VAL]]).item()}

    fit(net, cfg.train, updates, validate, nn.functional.cross_entropy, progress=False)
    with torch.no_grad():
        return net(pooled[sel[TEST]]).argmax(1).numpy()


TASK = SpeechClassifyTask()
