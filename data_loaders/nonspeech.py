"""Generated audio that is not speech: what a classifier of words must call "unknown".

Seven kinds, `n` clips each, seeded, 0.3 to 3 s long at `rate` Hz, peak in
[0.1, 0.9]: pure tones, frequency sweeps, white/pink/brown noise, chords with
harmonics and envelopes (music-like), tone bursts and clicks, amplitude- and
frequency-modulated tones (siren-like), and silence (digital zeros, or noise
far below the speech level: the served model answers those "unknown" before the
network runs). Used by the classifier's evaluation (`false_accept`) and its tests.
"""

from __future__ import annotations

import numpy as np

KINDS = ("tone", "sweep", "noise", "chord", "clicks", "modulated", "silence")


def signals(rate: int = 8000, seed: int = 0, n: int = 12) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {k: [] for k in KINDS}
    for _ in range(n):
        for kind in KINDS:
            t = np.arange(int(rng.uniform(0.3, 3.0) * rate)) / rate
            clip = _MAKERS[kind](t, rate, rng)
            if kind != "silence":
                clip = clip / max(np.abs(clip).max(), 1e-12) * rng.uniform(0.1, 0.9)
            out[kind].append(clip.astype(np.float32))
    return out


def _tone(t, rate, rng):
    return np.sin(2 * np.pi * rng.uniform(80, 0.45 * rate) * t)


def _sweep(t, rate, rng):
    f0, f1 = rng.uniform(80, 0.45 * rate, 2)
    if rng.random() < 0.5:  # linear
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1]))
    else:  # exponential
        k = (f1 / f0) ** (1 / t[-1])
        phase = 2 * np.pi * f0 * (k ** t - 1) / np.log(k)
    return np.sin(phase)


def _noise(t, rate, rng):
    white = rng.standard_normal(len(t))
    colour = rng.choice(3)  # 0 white, 1 pink (1/f), 2 brown (1/f^2)
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(len(t)), 1 / len(t))
    return np.fft.irfft(spectrum / f ** (colour / 2), len(t))


def _chord(t, rate, rng):
    notes = 110 * 2 ** (rng.integers(0, 36, rng.integers(2, 5)) / 12)
    env = np.exp(-t * rng.uniform(0.5, 4)) * (1 - np.exp(-t * 200))
    return env * sum(sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 5)
                         if f * h < rate / 2) for f in notes)


def _clicks(t, rate, rng):
    x = np.zeros(len(t))
    for start in rng.uniform(0, t[-1], rng.integers(2, 12)):
        i = int(start * rate)
        burst = np.sin(2 * np.pi * rng.uniform(200, 3000) * t[: int(0.02 * rate)])
        x[i:i + len(burst)] += burst[: len(x) - i]
    return x


def _modulated(t, rate, rng):
    f = rng.uniform(300, 1500)
    vibrato = rng.uniform(50, 400) * np.sin(2 * np.pi * rng.uniform(0.5, 8) * t)
    am = 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(1, 12) * t)
    return am * np.sin(2 * np.pi * np.cumsum(f + vibrato) / rate)


def _silence(t, rate, rng):
    return np.zeros(len(t)) if rng.random() < 0.5 else 1e-4 * rng.standard_normal(len(t))


_MAKERS = {"tone": _tone, "sweep": _sweep, "noise": _noise, "chord": _chord,
           "clicks": _clicks, "modulated": _modulated, "silence": _silence}
