"""Audio: WAV/FLAC/OGG files -> mono float32 at one sample rate -> frames of
log-mel energies (or MFCC with deltas), float32 [T, F] per utterance.

Labels come from one of the two layouts users have: Free Spoken Digit Dataset
names (`{label}_{speaker}_{index}.wav`) or one folder per label (Speech
Commands style, `{label}/{speaker}_nohash_{index}.wav`). Features are cached on
disk, keyed by the file's content and the feature settings. Bad files (empty,
undecodable, silent, too short) are reported by path, never skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from data_loaders.files import atomic_write
from data_loaders.sequences import TEST, TRAIN, VAL

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
FEATURES = ("logmel", "mfcc")
SPLITS = ("index", "random", "speaker")
FSDD_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>[^_]+)_(?P<index>\d+)$")
COMMANDS_NAME = re.compile(r"^(?P<speaker>.+)_nohash_(?P<index>\d+)$")


class AudioError(ValueError):
    """A bad audio file or layout; the message names the path."""


def _setting(default, help: str, choices: tuple = ()):
    """A feature setting with its meaning and allowed values (shown by --help)."""
    return field(default=default, metadata={"help": help, "choices": choices})


MAX_RATE = 384_000  # Hz: studio audio's highest sample rate


@dataclass
class FeatureSettings:
    sample_rate: int = _setting(8000, "Hz; files at other rates are resampled")
    features: str = _setting("logmel", "logmel, or mfcc (with first and second deltas)",
                             FEATURES)
    n_mels: int = _setting(40, "mel bands")
    n_mfcc: int = _setting(13, "MFCC coefficients (before deltas)")
    win_ms: float = _setting(25.0, "analysis window")
    hop_ms: float = _setting(10.0, "hop between frames")
    min_ms: float = _setting(50.0, "files shorter than this after trimming are reported as too "
                                   "short")
    silence_db: float = _setting(-50.0, "files whose peak is below this (dBFS) are reported "
                                        "as silent")
    trim_db: float = _setting(30.0, "leading and trailing frames this far (dB) below the "
                                    "loudest are cut, in training and serving alike; 0: keep")

    def validate(self) -> FeatureSettings:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {list(FEATURES)}, got {self.features!r}")
        for name in ("sample_rate", "n_mels", "n_mfcc", "win_ms", "hop_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 4000 <= self.sample_rate <= MAX_RATE:  # under 4 kHz speech's band is lost
            raise ValueError(f"sample_rate must be 4000 to {MAX_RATE} Hz (speech needs the "
                             f"band up to 2 kHz), got {self.sample_rate!r}")
        if self.hop_ms > self.win_ms:
            raise ValueError(f"hop_ms ({self.hop_ms}) must not exceed win_ms ({self.win_ms})")
        if min(self.frame_sizes()) < 1:
            raise ValueError(f"win_ms and hop_ms must each span at least one sample at "
                             f"{self.sample_rate} Hz, got {self.win_ms} and {self.hop_ms}")
        if self.win_ms > 1000 or self.n_mels > 256:
            raise ValueError(f"win_ms must be at most 1000 and n_mels at most 256, got "
                             f"{self.win_ms} and {self.n_mels}")
        if empty := self.empty_mel_bands():
            raise ValueError(f"n_mels: {empty} of the {self.n_mels} mel bands get no FFT bin "
                             f"of a {self.win_ms:g} ms window at {self.sample_rate} Hz; use "
                             "fewer n_mels or a longer win_ms")
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) must not exceed n_mels ({self.n_mels}): "
                             "the coefficients come from the mel bands")
        for name in ("min_ms", "trim_db", "silence_db"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        for name in ("min_ms", "trim_db"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        return self

    def empty_mel_bands(self) -> int:
        """How many mel bands no FFT bin falls in (librosa warns, and they read nothing)."""
        import warnings

        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = librosa.filters.mel(sr=self.sample_rate, n_fft=self.frame_sizes()[0],
                                          n_mels=self.n_mels)
        return int((weights.max(axis=1) == 0).sum())

    def settings(self) -> dict:
        """The feature settings alone (a subclass may carry more fields)."""
        return {f.name: getattr(self, f.name) for f in fields(FeatureSettings)}

    def key(self) -> str:
        """Names the cache folder: any change of setting gives a new one."""
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]

    def frame_sizes(self) -> tuple[int, int]:
        """(window, hop) in samples."""
        return (int(round(self.win_ms * self.sample_rate / 1000)),
                int(round(self.hop_ms * self.sample_rate / 1000)))

    @property
    def dim(self) -> int:
        return self.n_mels if self.features == "logmel" else 3 * self.n_mfcc


@dataclass
class Utterance:
    path: Path
    label: str
    speaker: str | None
    index: int | None


def probe(data: bytes) -> tuple[int, int, int]:
    """(frames, sample rate, channels) of a WAV/FLAC/OGG file's bytes, from its header:
    what decoding it would cost, known before decoding."""
    import soundfile

    if not data:
        raise AudioError("audio bytes: empty (0 bytes)")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as err:  # soundfile raises several types for bad data
        raise AudioError(f"audio bytes: cannot decode as WAV/FLAC/OGG ({type(err).__name__}: "
                         f"{_plain(err)})") from None
    if info.samplerate <= 0 or info.frames < 0 or info.channels <= 0:
        raise AudioError(f"audio bytes: header says {info.frames} frames, {info.samplerate} "
                         f"Hz, {info.channels} channels")
    if why := truncated(info):
        raise AudioError(f"audio bytes: {why}")
    return info.frames, info.samplerate, info.channels


def truncated(info) -> str | None:
    """Why a WAV (or RF64) is cut short (an upload or a copy that stopped), from
    libsndfile's reading of its header ("data : 7990 (should be 3973)"), or None:
    decoded, it would be a shorter recording, with nothing to say so."""
    log = info.extra_info
    if cut := re.search(r"^data : (\d+) \(should be (\d+)\)", log, re.M):
        said, held, unit = int(cut[1]), int(cut[2]), "bytes of audio"
    elif cut := re.search(r"frame count (\d+) does not match value from 'ds64' chunk of "
                          r"(\d+)", log):
        said, held, unit = int(cut[2]), int(cut[1]), "frames"
    else:
        return None
    if held < said < STREAMED:
        return f"truncated: the header says {said} {unit}, the file holds {held}"
    return None


STREAMED = 0x7FFFFF00  # a WAV written as a stream declares 2**31 - 1 or 2**32 - 1 bytes


def _header_problem(source) -> str | None:
    """`truncated`'s answer for a file or bytes that soundfile reads (others: None, and
    decoding says what is wrong)."""
    import soundfile

    try:
        info = soundfile.info(source)
    except Exception:  # decoding will name it
        return None
    finally:
        if isinstance(source, io.BytesIO):
            source.seek(0)
    return truncated(info)


def _plain(err: Exception) -> str:
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the bytes", str(err))


def decode(source: str | Path | bytes, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` from a file path or the file's bytes."""
    import librosa  # imported here: slow to import, and only audio needs it

    name = "audio bytes" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        if not source:
            raise AudioError(f"{name}: empty (0 bytes)")
        source = io.BytesIO(source)
    elif Path(source).stat().st_size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    if why := _header_problem(source):
        raise AudioError(f"{name}: {why}")
    try:
        samples, native = librosa.load(source, sr=None, mono=False)
    except Exception as err:  # soundfile and audioread raise many types for bad data
        raise AudioError(f"{name}: cannot decode as WAV/FLAC/OGG ({type(err).__name__}: "
                         f"{_plain(err)})") from None
    if why := bad_values(samples):  # a float file may hold NaN, which librosa refuses
        raise AudioError(f"{name}: {why}")
    samples = librosa.to_mono(samples)  # then librosa.load's own steps, after the check
    if native != sample_rate:
        samples = librosa.resample(samples, orig_sr=native, target_sr=sample_rate)
    return samples.astype(np.float32)


MAX_AMPLITUDE = 100.0  # audio lies in [-1, 1]; far beyond is a scaling mistake


def bad_values(samples: np.ndarray) -> str | None:
    """Why these sample values are no audio (NaN, infinity, far out of range), or None."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if not np.isfinite(peak):
        return "samples contain NaN or infinity"
    if peak > MAX_AMPLITUDE:
        return f"out of range: samples reach {peak:.3g}, audio lies in [-1, 1]"
    return None


def problem(samples: np.ndarray, s: FeatureSettings) -> str | None:
    """Why these samples cannot make an utterance, or None."""
    if samples.size == 0:
        return "no samples"
    if why := bad_values(samples):
        return why
    peak = float(np.abs(samples).max())
    ms = 1000 * samples.size / s.sample_rate
    if ms < s.min_ms:
        return f"too short: {ms:.0f} ms (min_ms is {s.min_ms:g})"
    db = 20 * np.log10(peak) if peak > 0 else -np.inf
    if db < s.silence_db:
        return f"silent: peak {db:.1f} dBFS (silence_db is {s.silence_db:g})"
    return None


def trim(samples: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """The samples without leading and trailing silence: digital zeros exactly (so
    padding a recording with them changes nothing), then the frames more than trim_db
    below the loudest frame."""
    import librosa

    if not s.trim_db:
        return samples
    samples = np.trim_zeros(samples)
    if samples.size == 0:
        return samples
    win, hop = s.frame_sizes()
    return librosa.effects.trim(samples, top_db=s.trim_db, frame_length=win,
                                hop_length=hop)[0]


def trimmed(samples: np.ndarray, s: FeatureSettings) -> tuple[np.ndarray, str | None]:
    """The samples after trimming, and why they cannot make an utterance (None when they
    can): the same checks in training and serving, before and after trimming."""
    why = problem(samples, s)
    if why:
        return samples, why
    cut = trim(samples, s)
    return cut, problem(cut, s)


def frames(samples: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """float32 [T, F] of (trimmed) samples: log-mel energies, or MFCC with first and
    second deltas."""
    import librosa

    win, hop = s.frame_sizes()
    mel = librosa.feature.melspectrogram(y=samples, sr=s.sample_rate, n_fft=win,
                                         hop_length=hop, n_mels=s.n_mels)  # [n_mels, T]
    logmel = np.log(mel + 1e-10)
    if s.features == "logmel":
        return logmel.T.astype(np.float32)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=s.n_mfcc)
    width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))  # deltas need an odd width <= T
    if width < 3:
        raise AudioError(f"{mfcc.shape[1]} frames are too few for MFCC deltas")
    deltas = [librosa.feature.delta(mfcc, order=o, width=width) for o in (1, 2)]
    return np.concatenate([mfcc, *deltas]).T.astype(np.float32)  # [3 * n_mfcc, T] -> [T, F]


def whole_frames(n_samples: int, s: FeatureSettings) -> int:
    """How many frames `stream_frames` makes of this many samples."""
    win, hop = s.frame_sizes()
    return 0 if n_samples < win else 1 + (n_samples - win) // hop


def stream_frames(samples: np.ndarray, s: FeatureSettings) -> tuple[np.ndarray, int]:
    """Log-mel frames float32 [T, n_mels] of every whole window in `samples` (frame k reads
    samples k*hop .. k*hop + win, not centred: no frame waits for samples after its
    window, so audio sent in pieces frames as it would whole), and the samples they use
    up (T * hop): the rest begins the next frame."""
    import librosa

    win, hop = s.frame_sizes()
    n = whole_frames(len(samples), s)
    if n == 0:
        return np.zeros((0, s.n_mels), np.float32), 0
    mel = librosa.feature.melspectrogram(y=samples[:(n - 1) * hop + win], sr=s.sample_rate,
                                         n_fft=win, hop_length=hop, n_mels=s.n_mels,
                                         center=False)  # [n_mels, n]
    return np.log(mel + 1e-10).T.astype(np.float32), n * hop


def discover(root: str | Path) -> list[Utterance]:
    """Every audio file under `root` with its label, speaker and take index."""
    root = Path(root)
    if not root.is_dir():
        raise AudioError(f"data: {root} is not a folder of audio files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise AudioError(f"data: no {'/'.join(AUDIO_SUFFIXES)} files under {root}")
    out = []
    for path in files:
        in_folder = path.parent != root
        if in_folder and (m := COMMANDS_NAME.match(path.stem)):  # {label}/{spk}_nohash_{n}
            out.append(Utterance(path, path.parent.name, m["speaker"], int(m["index"])))
        elif m := FSDD_NAME.match(path.stem):  # {label}_{speaker}_{index}
            out.append(Utterance(path, m["label"], m["speaker"], int(m["index"])))
        elif in_folder:  # {label}/anything
            out.append(Utterance(path, path.parent.name, None, None))
        else:
            raise AudioError(f"{path}: cannot tell its label; name it "
                             "{label}_{speaker}_{index}.wav or put it in a folder named "
                             "after its label")
    return out


def speakers(utts: list[Utterance]) -> list[str]:
    """The speakers, sorted; split=speaker needs one in every file name and three or more."""
    known = sorted({u.speaker for u in utts if u.speaker is not None})
    if len(known) < 3 or any(u.speaker is None for u in utts):
        raise AudioError(f"split=speaker needs at least 3 speakers, known for every file; "
                         f"found {known}")
    return known


def split_utterances(utts: list[Utterance], how: str, val_frac: float = 0.1,
                     test_frac: float = 0.2, test_index: int = 5, seed: int = 0,
                     test_speaker: str = "") -> np.ndarray:
    """Split per utterance (TRAIN, VAL or TEST, as in data_loaders.sequences):
    - index: take index < test_index is test (FSDD's own split: 0-4);
    - random: a seeded test_frac of the files is test;
    - speaker: every file of `test_speaker` is test, no other speaker's.
    Validation is a seeded val_frac of the rest."""
    if how not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {how!r}")
    rng = np.random.default_rng(seed)
    n = len(utts)
    split = np.full(n, TRAIN, np.int8)
    if how == "speaker":
        known = speakers(utts)
        if not test_speaker:
            raise AudioError(f"split=speaker: give test_speaker (one of {known}) to hold one "
                             "speaker out; the main entry point, without it, holds each out "
                             "in turn")
        if test_speaker not in known:
            raise AudioError(f"test_speaker: {test_speaker!r} is not one of the speakers "
                             f"{known}")
        split[[u.speaker == test_speaker for u in utts]] = TEST
    elif how == "index":
        if any(u.index is None for u in utts):
            raise AudioError("split=index needs a take index in every file name")
        split[[u.index < test_index for u in utts]] = TEST
    else:
        split[rng.permutation(n)[: round(test_frac * n)]] = TEST
    rest = np.flatnonzero(split == TRAIN)
    split[rng.permutation(rest)[: round(val_frac * len(rest))]] = VAL
    return split


class FeatureCache:
    """Features on disk: {folder}/{settings key}/{sha256 of the file's bytes}.npy."""

    def __init__(self, folder: str | Path, settings: FeatureSettings):
        self.folder = Path(folder) / settings.key()

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        p = self.path(digest)
        return np.load(p) if p.exists() else None

    def put(self, digest: str, feats: np.ndarray) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save adds no ".npy" to it
                np.save(f, feats)

        atomic_write(self.path(digest), write)


def utterance_features(data: bytes, name: str, s: FeatureSettings) -> np.ndarray:
    """Bytes of one audio file -> validated features [T, F]; AudioError names `name`."""
    try:
        samples = decode(data, s.sample_rate)
    except AudioError as err:
        raise AudioError(str(err).replace("audio bytes", name, 1)) from None
    cut, why = trimmed(samples, s)
    if why:
        raise AudioError(f"{name}: {why}")
    return frames(cut, s)


def load_features(utts: list[Utterance], s: FeatureSettings, cache_dir: str | Path | None,
                  skip_bad: bool = False, progress: bool | None = None):
    """Features for each utterance, from the cache when it has them. A bar at a
    terminal; one line at the end either way.

    Returns (features, kept utterances, bad: [(path, problem)]). Bad files stop the
    run with their list unless `skip_bad`, in which case they are left out and
    returned for the caller to log."""
    import time

    from tqdm.auto import tqdm

    cache = FeatureCache(cache_dir, s) if cache_dir else None
    feats, kept, bad, hits, t0 = [], [], [], 0, time.perf_counter()
    for u in tqdm(utts, desc="features", unit="file",
                  disable=None if progress is None else not progress):
        data = u.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        x = cache.get(digest) if cache else None
        # decoding checks the header; a cached file, not decoded, may predate that check
        if x is not None and (why := _header_problem(io.BytesIO(data))):
            bad.append((str(u.path), why))
            continue
        hits += x is not None
        if x is None:
            try:
                x = utterance_features(data, str(u.path), s)
            except AudioError as err:
                bad.append((str(u.path), str(err).removeprefix(f"{u.path}: ")))
                continue
            if cache:
                cache.put(digest, x)
        feats.append(x)
        kept.append(u)
    print(f"features: {len(utts)} files ({hits} from the cache, {len(bad)} bad) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    if bad and not skip_bad:
        listing = "; ".join(f"{p}: {why}" for p, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise AudioError(f"{len(bad)} bad audio file(s): {listing}{more}. Fix or remove them, "
                         "or pass skip_bad=true to leave them out (the list is then logged)")
    return feats, kept, bad


def utterance_cmvn(x: np.ndarray) -> np.ndarray:
    """Per-utterance mean and variance normalisation of [T, F] frames."""
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 1e-8, std, 1.0)).astype(np.float32)


def channel_features(utts: list[Utterance], s: FeatureSettings, variants: int, seed: int,
                     cache_dir: str | Path | None, progress: bool | None = None):
    """Features of each utterance heard through `variants` random channels
    (data_loaders/channel.py), channel k of a file drawn from (seed, k, its content):
    the same on every machine. Cached as `load_features` caches, keyed by content and
    chain. A variant that trimming leaves unusable (a quiet file made silent) falls back
    to the file as recorded. Returns (features [variants][N], chains in words, alike)."""
    from tqdm.auto import tqdm

    from data_loaders import channel

    cache = FeatureCache(cache_dir, s) if cache_dir else None
    feats, words = [[] for _ in range(variants)], [[] for _ in range(variants)]
    for u in tqdm(utts, desc="channel variants", unit="file",
                  disable=None if progress is None else not progress):
        data = u.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        samples = None
        for k in range(variants):
            chain = channel.draw(np.random.default_rng([seed, k, int(digest[:12], 16)]),
                                 s.sample_rate)
            key = hashlib.sha256(data + repr(chain).encode()).hexdigest()
            x = cache.get(key) if cache else None
            if x is None:
                samples = decode(data, s.sample_rate) if samples is None else samples
                cut, why = trimmed(channel.apply(samples, s.sample_rate, chain), s)
                if why:  # the file as recorded: it loaded, so it is usable
                    cut = trimmed(samples, s)[0]
                x = frames(cut, s)
                if cache:
                    cache.put(key, x)
            feats[k].append(x)
            words[k].append(channel.describe(chain))
    return feats, words
