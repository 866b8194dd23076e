"""Feature extraction throughput: seconds of audio per second of wall time, cold
(decode + log-mel for every file, written to an empty cache) and from the cache.

    python -m bench.audio_features [--data DIR]

Default data: the bundled 3,000 FSDD files. Result: the cold throughput
(target >= 1: faster than real time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import soundfile as sf

from bench.common import pin_allocator, result
from data_loaders import audio
from pipeline.core.params import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "fsdd" / "recordings"))
    args = parser.parse_args()
    pin_allocator()
    utts = audio.discover(args.data)
    seconds = sum(sf.info(u.path).duration for u in utts)
    settings = audio.FeatureSettings()
    audio.frames(audio.decode(utts[0].path, settings.sample_rate), settings)  # lazy imports
    print(f"{len(utts)} files, {seconds:.0f} s of audio, from {args.data}; "
          f"log-mel {settings.n_mels} bands, {settings.win_ms:g}/{settings.hop_ms:g} ms")
    with tempfile.TemporaryDirectory() as cache:
        rates = {}
        for label in ("cold", "cached"):
            t0 = time.perf_counter()
            feats, _, _ = audio.load_features(utts, settings, Path(cache), progress=False)
            wall = time.perf_counter() - t0
            rates[label] = seconds / wall
            print(f"{label:6s}: {wall:6.2f} s wall, {rates[label]:8.0f} s of audio per second")
    print(f"cache speed-up x{rates['cached'] / rates['cold']:.1f}")
    result("audio_features_cold_realtime_factor", rates["cold"], ">=", 1)


if __name__ == "__main__":
    main()
