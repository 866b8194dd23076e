"""Synthetic voices: espeak-ng saying each class label, for training only.

A few real speakers teach a classifier their voices as much as their words; many
synthetic ones (espeak-ng's English accents x its voice variants x pitch x speed)
make the words the common part. Voice k is drawn from a generator seeded by
(seed, k), so a seed names the same voices on every machine with the same espeak-ng.
Files are written once into `folder`/{key}/ as `{label}_synth{k}_0.wav` (the FSDD
layout, speaker `synth{k}`) and reused. Labels that are digits are spoken as words
("7" -> "seven"); other labels as they are written.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

from data_loaders.files import atomic_write

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SKIPPED_VARIANTS = ("whisper", "demonic", "fast_test")  # not voiced, or not speech-like


class SynthesisError(ValueError):
    """espeak-ng is missing or failed; the message says what to do."""


def spoken(label: str) -> str:
    return DIGITS[int(label)] if label.isdigit() and int(label) < 10 else label


def espeak(*args: str) -> str:
    if not shutil.which("espeak-ng"):
        raise SynthesisError("synthetic_voices needs espeak-ng (Debian: apt-get install "
                             "espeak-ng, or `make system`); or set synthetic_voices=0")
    proc = subprocess.run(["espeak-ng", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SynthesisError(f"espeak-ng {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def variants() -> list[str]:
    lines = espeak("--voices=variant").splitlines()[1:]
    names = sorted(line.split()[4].split("/")[-1] for line in lines)
    return [v for v in names if not any(s in v.lower() for s in SKIPPED_VARIANTS)]


def voice(k: int, seed: int, names: list[str]) -> list[str]:
    """espeak-ng options of voice k: accent+variant, pitch (0-99) and words per minute."""
    rng = np.random.default_rng([seed, k])
    accent, variant = ACCENTS[rng.integers(len(ACCENTS))], names[rng.integers(len(names))]
    return ["-v", f"{accent}+{variant}", "-p", str(rng.integers(20, 81)),
            "-s", str(rng.integers(110, 201))]


def synthesize(labels: list[str], n_voices: int, folder: str | Path, seed: int = 0,
               progress: bool | None = None) -> list[Path]:
    """The WAV files of n_voices voices saying every label (made once, then reused)."""
    return make([(label, k) for k in range(n_voices) for label in labels], folder, seed,
                (sorted(labels), n_voices, seed), progress)


def say_words(words: tuple[str, ...], voices: range, per_voice: int, folder: str | Path,
              seed: int = 0, progress: bool | None = None) -> list[Path]:
    """Each voice in `voices` says `per_voice` of `words`, drawn from (seed, voice)."""
    pairs = [(str(w), k) for k in voices
             for w in np.random.default_rng([seed, k, 1]).choice(words, per_voice, False)]
    return make(pairs, folder, seed, (sorted(pairs), seed), progress)


def make(pairs: list[tuple[str, int]], folder: str | Path, seed: int, key: tuple,
         progress: bool | None = None) -> list[Path]:
    """`{label}_synth{k}_0.wav`: voice k saying each label of `pairs`, in a subfolder
    named by `key`, espeak-ng's voices and version (made once, then reused)."""
    from tqdm.auto import tqdm

    names = variants()
    version = espeak("--version").strip()
    digest = hashlib.sha256(repr((*key, names, version)).encode())
    out = Path(folder) / digest.hexdigest()[:16]
    paths = [out / f"{label}_synth{k}_0.wav" for label, k in pairs]
    todo = [p for p in paths if not p.exists()]
    for path in tqdm(todo, desc="synthetic voices", unit="file",
                     disable=None if progress is None else not progress):
        label, k = path.stem.split("_")[0], int(path.stem.split("_")[1][5:])
        atomic_write(path, lambda tmp, k=k, label=label: espeak(
            *voice(k, seed, names), "-w", tmp, spoken(label)))
    if todo:
        print(f"synthetic voices: {len(todo)} files made in {out}", flush=True)
    return paths
