"""Channel augmentation: what another microphone, room or line does to a recording,
applied to training audio only (serving never augments).

A channel is a chain of links drawn from a generator (`draw`), each link taken with
probability one half (at least one is), applied in this order (`apply`):
- gain: the level moved by -18 to +6 dB (clipped at full scale, as a recorder would);
- resample: down to 4-7 kHz and back, each way by one of librosa's resamplers (a
  phone line or a low-rate recorder: the band above half the middle rate is gone);
- band: a Butterworth high-pass at 80-400 Hz and low-pass at 2.5-3.9 kHz (4th order);
- eq: one to three peaking filters, centres 150-3,500 Hz, gains of -10 to +10 dB
  (the RBJ cookbook's biquad: a microphone's or a room's colour);
- mulaw: 8-bit mu-law coding (a telephone codec: quantisation noise that follows
  the level).
`describe` says a chain in words, so a run can log what each training variant went
through.
"""

from __future__ import annotations

import numpy as np

RESAMPLERS = ("soxr_hq", "soxr_lq", "soxr_qq", "polyphase")
LINKS = ("gain", "resample", "band", "eq", "mulaw")


def draw(rng: np.random.Generator, rate: int) -> list[tuple[str, dict]]:
    """A random chain: [(link, its settings)] in the order they apply."""
    take = rng.random(len(LINKS)) < 0.5
    if not take.any():
        take[rng.integers(len(LINKS))] = True
    top = min(3500.0, 0.45 * rate)
    middle_top = min(7000, max(rate - 1, 4000))  # at 4 kHz (the lowest rate) no lower one
    settings = {
        "gain": lambda: {"db": rng.uniform(-18, 6)},
        "resample": lambda: {"middle": int(rng.integers(4000, middle_top + 1)),
                             "down": RESAMPLERS[rng.integers(len(RESAMPLERS))],
                             "up": RESAMPLERS[rng.integers(len(RESAMPLERS))]},
        "band": lambda: {"low": rng.uniform(80, 400),
                         "high": min(rng.uniform(2500, 3900), 0.45 * rate)},
        "eq": lambda: {"peaks": [(float(np.exp(rng.uniform(np.log(150), np.log(top)))),
                                  rng.uniform(-10, 10), rng.uniform(0.5, 2))
                                 for _ in range(int(rng.integers(1, 4)))]},
        "mulaw": dict,
    }
    return [(link, settings[link]()) for link, on in zip(LINKS, take, strict=True) if on]


def apply(samples: np.ndarray, rate: int, chain: list[tuple[str, dict]]) -> np.ndarray:
    """Mono float32 `samples` at `rate` Hz through `chain`; as many samples, in [-1, 1]."""
    import librosa
    from scipy.signal import butter, lfilter, sosfilt

    y = np.asarray(samples, np.float64)
    for link, s in chain:
        if link == "gain":
            y = np.clip(y * 10 ** (s["db"] / 20), -1, 1)
        elif link == "resample":
            low = librosa.resample(y, orig_sr=rate, target_sr=s["middle"], res_type=s["down"])
            back = librosa.resample(low, orig_sr=s["middle"], target_sr=rate, res_type=s["up"])
            y = back[:len(y)] if len(back) >= len(y) else np.pad(back, (0, len(y) - len(back)))
        elif link == "band":
            y = sosfilt(np.vstack([butter(4, s["low"], "highpass", fs=rate, output="sos"),
                                   butter(4, s["high"], "lowpass", fs=rate, output="sos")]), y)
        elif link == "eq":
            for centre, gain, q in s["peaks"]:
                y = lfilter(*peaking(centre, gain, q, rate), y)
        elif link == "mulaw":
            y = librosa.mu_expand(librosa.mu_compress(np.clip(y, -1, 1), mu=255, quantize=True),
                                  mu=255, quantize=True)
    return np.clip(y, -1, 1).astype(np.float32)


def describe(chain: list[tuple[str, dict]]) -> str:
    """The chain in words, e.g. "gain -7.2 dB; mu-law 8 bit"."""
    words = {
        "gain": lambda s: f"gain {s['db']:+.1f} dB",
        "resample": lambda s: f"resample via {s['middle']} Hz ({s['down']}, {s['up']})",
        "band": lambda s: f"band {s['low']:.0f}-{s['high']:.0f} Hz",
        "eq": lambda s: "eq " + ", ".join(f"{g:+.1f} dB at {c:.0f} Hz (Q {q:.1f})"
                                          for c, g, q in s["peaks"]),
        "mulaw": lambda s: "mu-law 8 bit",
    }
    return "; ".join(words[link](s) for link, s in chain)


def peaking(centre: float, gain_db: float, q: float, rate: int):
    """(b, a) of a peaking equaliser: gain_db at `centre` Hz, bandwidth set by q (Robert
    Bristow-Johnson's Audio EQ Cookbook)."""
    amp, w0 = 10 ** (gain_db / 40), 2 * np.pi * centre / rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp])
    return b / a[0], a / a[0]
