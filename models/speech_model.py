"""The MLflow pyfuncs that serve speech models from audio, not features.

Stored as models/served.py stores every model; the classes come from code
(`speech_classify_entry.py`, `speech_forecast_entry.py`). Feature extraction
and normalisation run inside, with the same functions training used.

Request: one row per utterance, either `audio` (the file's bytes: WAV, FLAC or
OGG; base64 over REST) or `samples` (array of floats in [-1, 1]) with
`sample_rate` (Hz); optional `utterance_id`.
Response, speech-classify: `utterance_id`, `label` (a class, or "unknown"),
`probability` (of the top class, calibrated), `reason` (why "unknown": silent, too
short, low confidence, like the non-speech it was trained to reject, or not a word it
knows; empty otherwise) and one `p_{class}` column per class. speech-forecast:
`utterance_id`, `l1` (the mean absolute error of predicting each frame `shift` steps
ahead, normalised log-mel units) and `embedding` (the mean of the top layer's hidden states).
speech-forecast with params `mode=rolling`: `samples` at the model's rate, framed as they
come (`audio.stream_frames`, no trimming), and a row per frame: `utterance_id`, `frame`
and `forecast` (the log-mel frame `shift` frames ahead); `mode=stream`: the same,
continuing each row's `state` (models/stream.py), the new state on its last row.
Limits (checked from the file headers before anything is decoded): MAX_ROWS clips and
MAX_REQUEST_SECONDS of audio per request, MAX_SECONDS and MAX_CLIP_SAMPLES per clip.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from data_loaders import audio
from data_loaders.sequences import Normaliser
from models import stream
from models.calibration import UNKNOWN, apply_rule
from models.networks import by_length, carry, logits_of, pad, state_bounds, state_size
from models.served import ServedModel, bad, cell, missing, no_state, numbers, row_id, sent_id

# Request limits, set so that the largest request allowed finishes well inside MLflow's
# 60 s scoring timeout on two cores with well under 1 GB of memory: 600 s of 44.1 kHz
# stereo in 10 clips took 1.8 s and 176 MiB in process (one network, one thread; the
# preset now averages two).
MAX_ROWS = 256  # clips
MAX_SECONDS = 60.0  # per clip
MAX_CLIP_SAMPLES = int(MAX_SECONDS * 48_000 * 2)  # per clip as stored: 60 s of 48 kHz stereo
MAX_REQUEST_SECONDS = 600.0  # all clips together
RATES = (1_000, audio.MAX_RATE)  # Hz: the sample rates a clip may have
# Inputs are typed Any, so that every bad value reaches the model's own checks, which
# name row and column (MLflow's would answer garbage base64 or a null with a bare
# TypeError); `audio` is the file's bytes in process and its base64 text over REST.
INPUTS = Schema([ColSpec(AnyType(), c, required=False)
                 for c in ("audio", "samples", "sample_rate", "utterance_id")])
FORECAST_MODES = ("utterance", "rolling", "stream")  # speech-forecast's params.mode
MAX_FORECAST_VALUES = 1_000_000  # frames x mel bands in one rolling or stream response


class AudioModel(ServedModel):
    """Audio rows -> frames, normalised as in training (global mean/std or per
    utterance)."""

    unit = "utterance"
    max_rows = MAX_ROWS
    most_per_row = MAX_SECONDS
    id_column = "utterance_id"
    needs = ("librosa",)

    def setup(self) -> None:
        self.settings = audio.FeatureSettings(**self.spec["audio"])
        self.norm = Normaliser.from_dict(self.normaliser) if self.normaliser else None

    def source(self, row: dict, i: int) -> tuple[str, object, float]:
        """What a row sends, checked against the per-clip limits before any decoding:
        (column, the file's bytes or (samples, rate), seconds of audio)."""
        samples = row.get("samples")
        if not missing(row.get("audio")):
            if not missing(cell(samples)):  # (MLflow makes `instances` rows that mix them one)
                raise bad(f"row {i}: send one of 'audio' and 'samples', not both (with "
                          "'instances', every row must send the same one)")
            return self._file(row["audio"], i)
        if not missing(samples):
            if hasattr(samples, "__len__") and not len(samples):
                raise bad(f"row {i}, column 'samples': no samples: send at least one")
            return self._samples(row, i)
        raise bad(f"row {i}: send 'audio' (the file's bytes) or 'samples' with 'sample_rate'")

    def _file(self, value, i: int) -> tuple[str, bytes, float]:
        data = file_bytes(value, i)
        try:
            frames, rate, channels = audio.probe(data)
        except audio.AudioError as err:
            raise _named(err, i) from None
        _check_rate(rate, i, "audio")
        seconds = frames / rate
        _check_seconds(seconds, i, "audio")
        if frames * channels > MAX_CLIP_SAMPLES:
            raise bad(f"row {i}, column 'audio': {channels} channel(s) at {rate} Hz for "
                      f"{seconds:.1f} s are {frames * channels:,} samples; the limit is "
                      f"{MAX_CLIP_SAMPLES:,} per clip ({MAX_SECONDS:g} s of 48 kHz stereo): "
                      f"resample it to {self.settings.sample_rate} Hz mono or cut it")
        return "audio", data, seconds

    def _samples(self, row: dict, i: int) -> tuple[str, tuple, float]:
        rate = cell(row.get("sample_rate"))
        number = isinstance(rate, int | float) and not isinstance(rate, bool) and not missing(rate)
        if not number or rate <= 0 or isinstance(rate, float) and not rate.is_integer():
            raise bad(f"row {i}, column 'sample_rate': must be a positive whole number of "
                      f"Hz when 'samples' is sent, got {rate!r}")
        _check_rate(rate, i, "sample_rate")
        samples = numbers(row["samples"], f"row {i}, column 'samples'")
        seconds = len(samples) / float(rate)
        _check_seconds(seconds, i, "samples")
        if why := audio.bad_values(samples):  # before float32, where 1e308 would be inf
            raise bad(f"row {i}, column 'samples': {why}")
        samples = samples.astype(np.float32)
        return "samples", (samples, int(rate)), seconds

    def frames(self, source: tuple, i: int, lenient: bool = False):
        """Raw (unnormalised) feature frames [T, F] of one row's source. Audio that cannot
        make an utterance (silent, too short) is a request error, or with `lenient` the
        reason, returned instead of frames."""
        import librosa

        s = self.settings
        where, data, _ = source
        if where == "audio":
            try:
                samples = audio.decode(data, s.sample_rate)
            except audio.AudioError as err:
                raise _named(err, i) from None
        else:
            samples, rate = data
            if rate != s.sample_rate:
                samples = librosa.resample(samples, orig_sr=rate, target_sr=s.sample_rate)
        cut, why = audio.trimmed(samples, s)
        if why and lenient and why.startswith(("silent", "too short")):
            return why.split(":")[0]  # no utterance in it: "unknown", not a broken request
        if why:
            raise bad(f"row {i}, column '{where}': {why}")
        return audio.frames(cut, s)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        return self.norm.transform(x) if self.norm else audio.utterance_cmvn(x)

    def rows(self, model_input) -> list[dict]:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame) == 1 and all(isinstance(v, list) for v in frame.iloc[0]) and any(
                c in frame for c in ("audio", "sample_rate", "utterance_id")):
            # `inputs` as a dict of columns reaches the model as one row of lists
            try:
                frame = pd.DataFrame({c: list(frame[c].iloc[0]) for c in frame.columns})
            except (TypeError, ValueError) as err:
                raise bad(f"inputs: the columns cannot make rows ({err})") from None
        first = frame["samples"].iloc[0] if len(frame) > 1 and "samples" in frame else None
        if isinstance(first, int | float | np.number) and not missing(first):
            # {"inputs": {"samples": [0.1, ...]}}: MLflow makes a row of each number
            raise bad(f"column 'samples': one number in each of {len(frame):,} rows; a row's "
                      "samples are one clip, an array: with inputs, send a list of clips "
                      '({"samples": [[0.1, ...]], "sample_rate": [8000]})')
        return super().rows(frame)

    def size(self, row: dict) -> float:
        """Seconds of audio, from the header (0 for a row the checks will refuse)."""
        try:
            return self.source(row, 0)[2]
        except MlflowException:
            return 0.0

    def budget(self) -> float:
        return MAX_REQUEST_SECONDS

    def batch(self, model_input, lenient: bool = False) -> tuple[list, list[str]]:
        """Raw frames (see `frames`) and ids of every row of a request, after every row
        has passed the limits (read from the headers: nothing is decoded before)."""
        rows = self.rows(model_input)
        ids = [row_id(r, "utterance_id", i) for i, r in enumerate(rows)]
        sources = [self.source(r, i) for i, r in enumerate(rows)]
        total = sum(seconds for *_, seconds in sources)
        if total > MAX_REQUEST_SECONDS:
            raise bad(f"request has {total:.1f} s of audio; the limit is "
                      f"{MAX_REQUEST_SECONDS:g} s per request: split the clips across "
                      f"{int(-(-total // MAX_REQUEST_SECONDS))} or more requests")
        return [self.frames(src, i, lenient) for i, src in enumerate(sources)], ids


def _named(err: audio.AudioError, i: int) -> MlflowException:
    return bad(f"row {i}, column 'audio': {str(err).removeprefix('audio bytes: ')}")


def _check_rate(rate, i: int, column: str) -> None:
    if not RATES[0] <= rate <= RATES[1]:
        shown = f"{rate:g}" if rate < 1e18 else "over 1e+18"  # a JSON integer may be 10**400
        raise bad(f"row {i}, column '{column}': a sample rate of {shown} Hz; expected "
                  f"{RATES[0]:,} to {RATES[1]:,} Hz")


def _check_seconds(seconds: float, i: int, column: str) -> None:
    if seconds > MAX_SECONDS:  # 7 digits: one frame over at 48 kHz shows (60.00002 s)
        raise bad(f"row {i}, column '{column}': {seconds:.7g} s is longer than the "
                  f"{MAX_SECONDS:g} s limit per clip: cut it into shorter clips")


MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS")  # how WAV, FLAC and OGG files begin


def file_bytes(value, i: int) -> bytes:
    """An audio file's bytes from the `audio` cell: the bytes themselves (in process), or
    their base64 text (over REST, in every request format; in an array of one in
    `inputs` and `instances`)."""
    value = cell(value)
    text = isinstance(value, str)
    if text:
        value = value.encode()
    if not isinstance(value, bytes | bytearray):
        raise bad(f"row {i}, column 'audio': expected the file's bytes (base64 over REST), "
                  f"got {type(value).__name__}")
    value = bytes(value)
    if value.startswith(MAGIC):
        return value
    if text:  # MIME-style base64 (a line break every 76 characters, as MLflow stores
        value = value.translate(None, b" \t\r\n")  # the input example) is base64 too
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as err:
        if text:
            raise bad(f"row {i}, column 'audio': not base64 text ({err})") from None
        return value  # raw bytes of something else: decoding will say what is wrong


class SpeechClassifier(AudioModel):
    entry = "speech_classify_entry.py"

    @staticmethod
    def signature(spec: dict) -> ModelSignature:
        outputs = [ColSpec(DataType.string, "utterance_id"), ColSpec(DataType.string, "label"),
                   ColSpec(DataType.double, "probability"), ColSpec(DataType.string, "reason")]
        outputs += [ColSpec(DataType.double, f"p_{c}") for c in spec["classes"]]
        # declared so that a mode meant for speech-forecast is refused, not dropped by MLflow
        params = ParamSchema([ParamSpec("mode", DataType.string, "utterance")])
        return ModelSignature(INPUTS, Schema(outputs), params)

    def serve(self, model_input, params: dict) -> pd.DataFrame:
        if (mode := params.get("mode") or "utterance") != "utterance":
            raise bad(f"params.mode: speech-classify labels whole utterances only "
                      f"('utterance'), got {mode!r}")
        raw, ids = self.batch(model_input, lenient=True)
        classes = self.spec["classes"]
        probs = np.full((len(raw), len(classes)), 1 / len(classes))  # no audio: no opinion
        reasons = [f if isinstance(f, str) else "" for f in raw]
        if ok := [i for i, f in enumerate(raw) if not isinstance(f, str)]:
            out = logits_of(self.net, [self.normalise(raw[i]) for i in ok])
            if not torch.isfinite(out).all():
                raise bad("the model produced non-finite outputs")
            probs[ok], why = self.probabilities(out)
            if not np.isfinite(probs).all():  # a damaged stored rule: never a NaN answer
                raise bad("the model produced non-finite probabilities (its stored "
                          f"rule: {self.spec.get('unknown')})")
            for i, w in zip(ok, why, strict=True):
                reasons[i] = w
        best = probs.argmax(1)
        out = pd.DataFrame({"utterance_id": ids,
                            "label": [UNKNOWN if r else classes[b]
                                      for r, b in zip(reasons, best, strict=True)],
                            "probability": probs[np.arange(len(best)), best],
                            "reason": reasons})
        for j, c in enumerate(classes):
            out[f"p_{c}"] = probs[:, j]
        return out

    def probabilities(self, out: torch.Tensor):
        """Calibrated probabilities and unknown reasons by the stored rule (models saved
        before it: plain softmax, never unknown)."""
        if rule := self.spec.get("unknown"):
            return apply_rule(out, rule, len(self.spec["classes"]))
        return torch.softmax(out, 1).numpy().astype(np.float64), [""] * len(out)


class SpeechForecaster(AudioModel):
    entry = "speech_forecast_entry.py"
    carried = ("state",)

    @staticmethod
    def signature(spec: dict) -> ModelSignature:
        inputs = Schema([*INPUTS.inputs, ColSpec(AnyType(), "state", required=False)])
        outputs = [ColSpec(DataType.string, "utterance_id"), ColSpec(DataType.double, "l1"),
                   ColSpec(Array(DataType.double), "embedding"),
                   ColSpec(DataType.long, "frame", required=False),  # rolling and stream
                   ColSpec(Array(DataType.double), "forecast", required=False),
                   ColSpec(DataType.string, "state", required=False)]
        params = ParamSchema([ParamSpec("mode", DataType.string, "utterance")])
        return ModelSignature(inputs, Schema(outputs), params)

    def setup(self) -> None:
        super().setup()
        win, _ = self.settings.frame_sizes()
        self.layout = stream.Layout(self.identity, {
            "samples": ("float32", 1, "rows"),  # those not yet framed
            "hidden": ("float32", state_size(self.net), None)}, win - 1, free_rows=True)

    def serve(self, model_input, params: dict) -> pd.DataFrame:
        mode = params.get("mode") or "utterance"
        if mode not in FORECAST_MODES:
            raise bad(f"params.mode must be one of {list(FORECAST_MODES)}, got {mode!r}")
        if mode != "utterance":
            return self.frame_forecasts(model_input, mode)
        frame = pd.DataFrame(model_input)
        no_state(frame["state"] if "state" in frame else [], mode)
        raw, ids = self.batch(model_input)
        l1, emb = [0.0] * len(raw), [None] * len(raw)
        for group, x, (out, hidden), lengths in self._forward(
                [self.normalise(f) for f in raw], with_hidden=True):
            for row, (i, n) in enumerate(zip(group, lengths, strict=True)):
                l1[i] = float((out[row, : n - self.spec["shift"]]
                               - x[row, self.spec["shift"]:n]).abs().mean())
                emb[i] = hidden[row, :n].mean(0).double().tolist()
        if not np.isfinite(l1).all() or not np.isfinite(np.concatenate(emb)).all():
            raise bad("the model produced a non-finite error or embedding")
        return pd.DataFrame({"utterance_id": ids, "l1": l1, "embedding": emb})

    def cannot_stream(self) -> str | None:
        """Why this model cannot forecast frame by frame as audio comes, or None."""
        if self.settings.features != "logmel":
            return "its MFCC deltas read frames ahead"
        if not self.norm:
            return "it normalises each utterance by the utterance's own mean and std"
        if getattr(self.net, "bidirectional", False):
            return "it reads each utterance backwards too"
        return None

    def frame_forecasts(self, model_input, mode: str) -> pd.DataFrame:
        """A forecast at every frame of each row's samples (rolling: from a zero state;
        stream: continuing the row's state, the new one on the series' last row)."""
        if why := self.cannot_stream():
            raise bad(f"params.mode {mode!r}: this model cannot forecast frame by frame: {why}")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if mode != "stream":
            no_state(frame["state"] if "state" in frame else [], mode)
        rows = self.rows(frame)
        ids = [row_id(r, "utterance_id", i) for i, r in enumerate(rows)]
        states = [stream.decode(cell(r["state"]), self.layout, i)
                  if mode == "stream" and not missing(cell(r.get("state"))) else None
                  for i, r in enumerate(rows)]
        sent = [sent_id(r, "utterance_id") for r in rows]
        for i, state in enumerate(states):
            if state:
                stream.same_series(state[0], sent[i], i)
            if state and (why := _impossible(state, self.net)):
                raise bad(f"row {i}, column 'state': {why}: the state is not one this model "
                          "returned")
        new = [self._stream_samples(r, i) for i, r in enumerate(rows)]
        buffers = [np.concatenate([s[1]["samples"][:, 0], x]) if s else x
                   for s, x in zip(states, new, strict=True)]
        frames = [audio.whole_frames(len(b), self.settings) for b in buffers]
        count = sum(frames) * self.settings.n_mels  # checked before any framing
        if count > MAX_FORECAST_VALUES:
            raise bad(f"request has {count:,} forecast values (frames x mel bands); the limit "
                      f"is {MAX_FORECAST_VALUES:,} per request: send shorter pieces")
        if mode == "rolling" and 0 in frames:
            raise bad(f"row {frames.index(0)}, column 'samples': shorter than one frame")
        framed = [audio.stream_frames(b, self.settings) for b in buffers]
        return self._frames_out(ids, sent, states, buffers, framed, mode == "stream")

    def _frames_out(self, ids, sent, states, buffers, framed, with_state: bool) -> pd.DataFrame:
        """The response rows: a forecast per frame (raw log-mel); with_state: each series'
        new state on its last row, which is a row of its own (frame -1, no forecast) when
        the piece finished no frame."""
        hidden = [torch.as_tensor(s[1]["hidden"]) if s else None for s in states]
        ready = [i for i, (f, _) in enumerate(framed) if len(f)]
        if ready:
            outs, after = carry(self.net, [torch.as_tensor(self.norm.transform(framed[i][0]))
                                           for i in ready], [hidden[i] for i in ready])
            for i, out, h in zip(ready, outs, after, strict=True):
                framed[i] = (self.norm.inverse_transform(out.numpy()), framed[i][1])
                hidden[i] = h
        if not all(np.isfinite(f).all() for f, _ in framed):
            raise bad("the model produced a non-finite forecast")
        parts = []
        for i, (forecast, used) in enumerate(framed):
            seen = states[i][0]["steps"] if states[i] else 0
            part = pd.DataFrame({"utterance_id": ids[i], "frame": seen + np.arange(len(forecast)),
                                 "forecast": list(forecast.astype(np.float64))})
            if with_state:
                if not len(part):
                    part = pd.DataFrame({"utterance_id": [ids[i]], "frame": [-1],
                                         "forecast": [[]]})
                part["state"] = ""
                part.loc[len(part) - 1, "state"] = stream.encode(
                    self.layout, sent[i], "", seen + len(forecast),
                    {"samples": buffers[i][used:, None], "hidden": hidden[i].numpy()
                     if hidden[i] is not None else np.zeros(state_size(self.net), np.float32)})
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    def _stream_samples(self, row: dict, i: int) -> np.ndarray:
        """A row's `samples` at the model's rate (resampling a piece alone would not give
        what resampling the whole gives), checked as `source` checks them."""
        where, data, _ = self.source(row, i)
        rate = self.settings.sample_rate
        if where != "samples" or data[1] != rate:
            raise bad(f"row {i}, column '{where}': frame by frame, send 'samples' at this "
                      f"model's {rate} Hz with sample_rate {rate}")
        return data[0]

    def raw_l1(self, model_input) -> np.ndarray:
        """Per utterance, the L1 error in raw feature units (log-mel, not normalised), so
        models with other normalisers compare on the same scale."""
        raw, _ = self.batch(model_input)
        shift, errors = self.spec["shift"], np.zeros(len(raw))
        for group, _, out, lengths in self._forward([self.normalise(f) for f in raw]):
            for row, (i, n) in enumerate(zip(group, lengths, strict=True)):
                f, pred = raw[i], out[row, : n - shift].numpy()
                if self.norm:
                    pred = self.norm.inverse_transform(pred)
                else:  # per-utterance CMVN: undo with this utterance's own mean and std
                    std = f.std(axis=0)
                    pred = pred * np.where(std > 1e-8, std, 1.0) + f.mean(axis=0)
                errors[i] = float(np.abs(pred - f[shift:n]).mean())
        return errors

    def _forward(self, frames: list[np.ndarray], with_hidden: bool = False):
        """(row indices, x, outputs, lengths) per group of rows of similar length; with
        `with_hidden`, (outputs, top hidden states [N, T, H]) in place of outputs."""
        shift = self.spec["shift"]
        short = [i for i, f in enumerate(frames) if len(f) <= shift]
        if short:
            raise bad(f"row {short[0]}: {len(frames[short[0]])} frames leave nothing to "
                      f"predict {shift} frames ahead")
        self.net.eval()
        for group in by_length([len(f) for f in frames]):
            x, lengths = pad([frames[i] for i in group])
            with torch.no_grad():
                out, _, hidden = self.net(x, with_hidden=True)
            yield group, x, (out, hidden) if with_hidden else out, lengths.tolist()


def _impossible(state, net) -> str | None:
    """What in a decoded audio state no run of this model can have produced, or None."""
    header, arrays = state
    if (np.abs(arrays["samples"]) > audio.MAX_AMPLITUDE).any():  # what a piece may send
        return f"its samples lie beyond ±{audio.MAX_AMPLITUDE:g}"
    return stream.unreachable(arrays, state_bounds(net), header["steps"])


def audio_request(paths: list[Path], ids: list[str]) -> pd.DataFrame:
    """The request these models take for audio files: each file's bytes and its id."""
    return pd.DataFrame({"audio": [p.read_bytes() for p in paths], "utterance_id": ids})
