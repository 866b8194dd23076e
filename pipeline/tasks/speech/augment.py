"""Data augmentation for speech training, on batches of raw log-mel frames [B, T, F]
with their lengths [B]; every draw comes from the training generator, so a seed
gives the same augmented batches. Serving never augments.

- freq_warp w: vocal-tract-length perturbation, frequencies (in Hz) scaled by a
  factor from [1 - w, 1 + w] (a longer or shorter vocal tract moves every formant
  by one factor), each mel band read from where its scaled centre falls;
- time_stretch s: tempo, each utterance resampled in time by a factor from
  [1 - s, 1 + s];
- noise_snr d: noise added in the power domain at an SNR from [d, d + 20] dB, with
  a random spectral tilt;
- freq_masks / time_masks n: SpecAugment, n bands of up to F/5 mel bins and n spans
  of up to 15 % of the frames set to the mean, after normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Augment:
    freq_warp: float = 0.0
    time_stretch: float = 0.0
    noise_snr: float = 0.0
    freq_masks: int = 0
    time_masks: int = 0
    sample_rate: int = 8000  # with n_mels: where the mel bands lie, for freq_warp
    n_mels: int = 40

    def __bool__(self) -> bool:
        return any((self.freq_warp, self.time_stretch, self.noise_snr, self.freq_masks,
                    self.time_masks))

    def raw(self, x: torch.Tensor, lengths: torch.Tensor, g: torch.Generator):
        """Before normalisation: warp, stretch, noise. Returns (x, lengths)."""
        if self.freq_warp:
            x = freq_warp(x, self.freq_warp, g, self.sample_rate)
        if self.time_stretch:
            x, lengths = time_stretch(x, lengths, self.time_stretch, g)
        if self.noise_snr:
            x = add_noise(x, lengths, self.noise_snr, g)
        return x, lengths

    def masks(self, x: torch.Tensor, lengths: torch.Tensor, g: torch.Generator):
        """After normalisation (zero is the mean): SpecAugment masks."""
        b, t, f = x.shape
        for _ in range(self.freq_masks):
            x = x * ~_span(torch.full((b,), f), f // 5, f, g)[:, None, :]
        for _ in range(self.time_masks):
            x = x * ~_span(lengths, (0.15 * lengths.max()).long().item(), t, g)[:, :, None]
        return x


def uniform(n: int, half_width: float, g: torch.Generator) -> torch.Tensor:
    """n factors from [1 - half_width, 1 + half_width]."""
    return 1 + (2 * torch.rand(n, generator=g) - 1) * half_width


def freq_warp(x: torch.Tensor, w: float, g: torch.Generator, sample_rate: int) -> torch.Tensor:
    import librosa

    b, t, f = x.shape
    centres = librosa.mel_frequencies(f + 2, fmax=sample_rate / 2)[1:-1]  # Hz, even in mel
    mel = librosa.hz_to_mel(centres)
    source = librosa.hz_to_mel(centres[None] / uniform(b, w, g)[:, None].numpy())  # [B, F]
    pos = torch.as_tensor((source - mel[0]) / (mel[1] - mel[0]), dtype=x.dtype).clamp(0, f - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=f - 1)
    frac = (pos - lo)[:, None, :]
    take = lambda i: torch.gather(x, 2, i[:, None, :].expand(b, t, f))  # noqa: E731
    return take(lo) * (1 - frac) + take(hi) * frac


def time_stretch(x: torch.Tensor, lengths: torch.Tensor, s: float, g: torch.Generator):
    new = (lengths * uniform(len(x), s, g)).round().long().clamp(min=2)
    out = torch.zeros(len(x), int(new.max()), x.shape[2])
    for i, (n, m) in enumerate(zip(lengths.tolist(), new.tolist(), strict=True)):
        src = torch.linspace(0, n - 1, m)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n - 1)
        frac = (src - lo)[:, None]
        out[i, :m] = x[i, lo] * (1 - frac) + x[i, hi] * frac
    return out, new


def add_noise(x: torch.Tensor, lengths: torch.Tensor, snr: float,
              g: torch.Generator) -> torch.Tensor:
    b, t, f = x.shape
    valid = (torch.arange(t)[None] < lengths[:, None])[..., None]
    power = (x.exp() * valid).sum((1, 2), keepdim=True) / (lengths[:, None, None] * f)
    db = snr + 20 * torch.rand(b, 1, 1, generator=g)
    tilt = torch.linspace(-1, 1, f)[None, None] * (torch.rand(b, 1, 1, generator=g) - 0.5)
    noise = power * 10 ** (-db / 10) * tilt.exp() * 2 * torch.rand(b, t, f, generator=g)
    return torch.where(valid, torch.log(x.exp() + noise), x)


def _span(lengths: torch.Tensor, most: int, size: int, g: torch.Generator) -> torch.Tensor:
    """[B, size] masks, each a span of up to `most` steps inside its row's length."""
    width = (torch.rand(len(lengths), generator=g) * (most + 1)).long()
    start = (torch.rand(len(lengths), generator=g) * (lengths - width).clamp(min=0)).long()
    at = torch.arange(size)[None]
    return (at >= start[:, None]) & (at < (start + width)[:, None])
