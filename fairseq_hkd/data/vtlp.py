"""Vocal tract length perturbation (VTLP) on log-mel frames: training utterances heard as if spoken by a
longer or shorter vocal tract.

Why: speech from speakers unlike the training speakers gets errors of its own. In the demo (fourteen seeds,
examples/synth/results/error-sources/) dev's sentences, read by voices of accents no training voice has, get 8.0 %
of their words wrong where the same model reads the same words right in a training voice's reading, against
2.4 % the other way round. Speakers differ first in their formants, which scale with the length of the vocal
tract; warping the frequency axis of the training speech by a random factor (Jaitly & Hinton 2013, "Vocal Tract
Length Perturbation (VTLP) improves speech recognition") shows the model more of them. Speed perturbation in
Kaldi, ESPnet, WeNet and icefall recipes does the same to the spectrum together with the tempo (``data/tempo.py``
does the tempo alone). Measured on the demo (U(0.9, 1.1), CIF, nine seeds, examples/synth/results/vtlp/): ahead
of the recipe on every split on average (dev -0.75, heldout -0.27 WER points; fire count +1.3), no interval
excluding zero; an option, not in the demo.

What: with probability ``prob`` utterance b gets a factor ``a ~ U(min, max)``; its warped spectrum at
frequency g is the original's at ``source(g)``, Jaitly & Hinton's piecewise-linear map with the formants
moved by ``a``:

    source(g) = g / a                                   for g <= g_b = F_HI * min(a, 1)
    source(g) = g_b / a + (g - g_b) (nyq - g_b / a) / (nyq - g_b)   above, so that source(nyq) = nyq

(a > 1 moves formants up, a shorter tract). Mel bin i (centre frequency f_i of the filterbank, data/fbank.py:
kaldi's 80 bins between LOW_FREQ and nyq) takes the log-mel value at the mel of ``source(f_i)``, linearly
interpolated between the two neighbouring bins' centres (clamped to the first and last bin). The warp is
done on the raw log-mel frames (the batch's global CMVN is undone and redone), so it needs ``--cmvn global``
or ``none``; it works with the feature store (no waveform is needed).

The ``cif_asr`` task applies it to collated training batches after tempo, before edge silence, noise and
SpecAugment (never to validation or decoding): the speech is warped, the silence and noise added after it
are not. Utterance b draws from its own generator seeded by the caller, so the factor does not depend on
batching, process or resumption.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_hkd.data.audio import SAMPLE_RATE
from fairseq_hkd.data.factor import FactorRange, draw_factor  # noqa: F401  (draw_factor: VTLP's draws)
from fairseq_hkd.errors import UserError

F_HI = 4800.0  # Hz: the boundary of the linear part at a = 1 (Jaitly & Hinton's choice at 16 kHz)
LOW_FREQ = 20.0  # Hz: kaldi's (and kaldi-native-fbank's) lowest mel edge; the highest is nyq


class VtlpConfig(FactorRange):
    def check(self) -> None:
        if not 0.5 <= self.min_factor <= self.max_factor <= 2.0:
            raise UserError(f"--vtlp-min and --vtlp-max must satisfy 0.5 <= min <= max <= 2 (got "
                            f"{self.min_factor:g}, {self.max_factor:g}); 1 1 = off, e.g. 0.9 1.1")
        if not 0 <= self.prob <= 1:
            raise UserError(f"--vtlp-prob must be in [0, 1], got {self.prob:g}")


def mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def inverse_mel(m):
    return 700.0 * np.expm1(np.asarray(m, dtype=np.float64) / 1127.0)


def source_frequency(g: np.ndarray, a: float, nyq: float = SAMPLE_RATE / 2) -> np.ndarray:
    """Hz [K] of the warped spectrum -> Hz [K] of the original it is read from (module docstring)."""
    g = np.asarray(g, dtype=np.float64)
    g_b = F_HI * min(a, 1.0)
    f_b = g_b / a
    return np.where(g <= g_b, g / a, f_b + (g - g_b) * (nyq - f_b) / (nyq - g_b))


def warp_positions(a: float, num_bins: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float64 [F]: for each output mel bin, the fractional input bin it is read from (in [0, F - 1])."""
    nyq = sample_rate / 2
    lo, hi = mel(LOW_FREQ), mel(nyq)
    step = (hi - lo) / (num_bins + 1)
    centres = inverse_mel(lo + step * np.arange(1, num_bins + 1))  # Hz [F]
    pos = (mel(source_frequency(centres, a, nyq)) - lo) / step - 1.0
    return np.clip(pos, 0.0, num_bins - 1.0)


def warp(x: torch.Tensor, a: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``x`` [n, F] raw log-mel frames -> the same frames with the frequency axis warped by ``a``."""
    if a == 1.0:
        return x
    F = x.shape[-1]
    pos = torch.from_numpy(warp_positions(a, F, sample_rate))
    lo = pos.floor().long().clamp_(max=F - 2)
    w = (pos - lo.to(torch.float64)).to(device=x.device, dtype=x.dtype)
    lo = lo.to(x.device)
    return x[:, lo] * (1 - w) + x[:, lo + 1] * w


def vtlp_batch(src: torch.Tensor, lengths: torch.Tensor, cfg: VtlpConfig, seeds: Sequence[Sequence[int]],
               mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """A new batch [B, T, F] and the factors [B] (float64): utterance b (its ``lengths[b]`` frames of ``src``,
    normalised as (raw - mean) / std, or raw when ``mean`` is None) warped by ``draw_factor`` from
    ``np.random.default_rng(seeds[b])`` and normalised again; padding stays as it was."""
    B, _, F = src.shape
    out = src.clone()
    factors = torch.ones(B, dtype=torch.float64)
    m = torch.zeros(F) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
    s = torch.ones(F) if std is None else torch.as_tensor(std, dtype=torch.float32)
    m, s = m.to(src.device), s.to(src.device)  # the warp runs where the batch is
    for b in range(B):
        n = int(lengths[b])
        a = draw_factor(cfg, np.random.default_rng(list(seeds[b])))
        factors[b] = a
        if a == 1.0 or n == 0:
            continue
        raw = src[b, :n].float() * s + m
        out[b, :n] = ((warp(raw, a) - m) / s).to(src.dtype)
    return out, factors
