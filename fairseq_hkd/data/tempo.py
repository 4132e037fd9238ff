"""Tempo perturbation: each training utterance is played U(min, max) times as fast, on its fbank frames.

Why: a CIF model learns to count tokens from what it hears, but in a corpus where every sentence is
spoken at one pace the utterance's length is a good guess of its token count, and an under-trained
weight predictor leans on it: the demo's CIF at 8,000 updates has sum(alpha) ~ 0.88 S + 0.03 frames
on heldout and under-counts its fastest third by 0.3 tokens (examples/synth/results/fire-count-settings).
Hearing the same sentence at several paces makes the length less informative about the count. Speed
perturbation (0.9 / 1.0 / 1.1) is in the standard recipes of Kaldi, ESPnet, WeNet and icefall for
the same reason of rate diversity. Measured on the demo (U(0.9, 1.1), CIF seed 1, 2,600 updates):
it did not raise the count (69.3 % against 72.0 %; heldout WER 12.75 against 13.64), so the recipe
does not use it (examples/synth/conf/tiny_tempo.sh).

What: with probability ``prob`` utterance b (``n`` frames) gets a factor ``f ~ U(min, max)`` and
becomes ``m = max(1, round(n / f))`` frames, frame j taken at position ``j * (n - 1) / (m - 1)``
of the original by linear interpolation between its two neighbouring frames (the first and last
frames are kept; f > 1 is faster, shorter). This is a tempo change (pitch and spectrum kept), on
the 10 ms frames the task already has, so it works with the feature store; the waveform is not
needed. A factor that would leave the encoder fewer output frames than the utterance has target
units (CIF cannot fire more than once per frame) is replaced by 1 for that utterance.

The ``cif_asr`` task applies it to collated training batches after sentence joins and before edge
silence and SpecAugment (never to validation or decoding); utterance b draws from its own generator
seeded by the caller, so the factor does not depend on batching, process or resumption. Batching by
``--max-tokens`` counts every utterance as ``ceil(n / min)`` frames when ``min < 1``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_hkd.data.factor import FactorRange, draw_factor  # noqa: F401  (draw_factor: tempo's draws)
from fairseq_hkd.errors import UserError


class TempoConfig(FactorRange):
    def check(self) -> None:
        if not 0 < self.min_factor <= self.max_factor:
            raise UserError(f"--tempo-min and --tempo-max must satisfy 0 < min <= max "
                            f"(got {self.min_factor:g}, {self.max_factor:g}); 1 1 = off, e.g. 0.9 1.1")
        if not 0 <= self.prob <= 1:
            raise UserError(f"--tempo-prob must be in [0, 1], got {self.prob:g}")

    def frame_scale(self) -> float:
        """The most an utterance can grow: batching counts ``n * frame_scale`` frames."""
        return 1.0 / self.min_factor if self.enabled() and self.min_factor < 1 else 1.0


def stretched_length(n: int, factor: float) -> int:
    return max(1, int(round(n / factor)))


def stretch(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x`` [n, F] resampled to ``m`` frames by linear interpolation along time (ends kept)."""
    n = x.shape[0]
    if m == n:
        return x
    if n == 1 or m == 1:
        return x[:1].expand(m, -1).clone() if n == 1 else x[:1].clone()
    pos = torch.arange(m, dtype=torch.float64, device=x.device) * ((n - 1) / (m - 1))
    lo = pos.floor().long().clamp_(max=n - 2)
    w = (pos - lo.to(torch.float64)).to(x.dtype).unsqueeze(1)
    return x[lo] * (1 - w) + x[lo + 1] * w


def tempo_batch(
    src: torch.Tensor,
    lengths: torch.Tensor,
    cfg: TempoConfig,
    seeds: Sequence[Sequence[int]],
    target_lengths: Optional[torch.Tensor] = None,
    encoder_output_lengths: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A new padded batch ``src'`` [B, T', F], ``lengths'`` [B] and the factors used [B] (float64):
    utterance b (its ``lengths[b]`` frames of ``src`` [B, T, F]) stretched by ``draw_factor`` from
    ``np.random.default_rng(seeds[b])``. With ``target_lengths`` [B] and ``encoder_output_lengths``
    (frames -> encoder frames), a factor leaving fewer encoder frames than target units becomes 1."""
    B, _, F = src.shape
    factors = torch.ones(B, dtype=torch.float64)
    new_lengths = lengths.clone()
    for b in range(B):
        f = draw_factor(cfg, np.random.default_rng(list(seeds[b])))
        m = stretched_length(int(lengths[b]), f)
        if f != 1.0 and target_lengths is not None and encoder_output_lengths is not None:
            if int(encoder_output_lengths(torch.tensor([m]))[0]) < int(target_lengths[b]):
                f, m = 1.0, int(lengths[b])
        factors[b], new_lengths[b] = f, m
    out = src.new_zeros(B, int(new_lengths.max()), F)
    for b in range(B):
        n = int(lengths[b])
        out[b, : int(new_lengths[b])] = stretch(src[b, :n], int(new_lengths[b]))
    return out, new_lengths, factors
