"""Edge-silence augmentation: training utterances gain a random stretch of silence at each end.

Why: a corpus cut at the first and last phoneme (the synthesized demo corpus) teaches a model that
speech starts at frame 0; decoded on voice-activity segments, which start a few tens of ms early or
late and end with a pause, such a model loses several WER points (BENCHMARKS.md, long recordings).
Real recordings, and segments cut from them, have silence or background noise at their edges.

What: with probability ``prob`` an utterance gets ``U{0..max_start}`` frames before and
``U{0..max_end}`` frames after it, copied from a bank of silence frames: the fbank of 2 s of digital
silence or of white noise at -80, -70 or -60 dBFS (one level per utterance, drawn uniformly), put
through the task's CMVN like every other frame. The frames are contiguous in the bank, as in audio.

The ``cif_asr`` task applies it to collated training batches before SpecAugment (never to
validation or decoding); utterance b draws from its own generator seeded by the caller, so the
padding does not depend on batching, process or resumption. It needs frame-wise normalisation
(``--cmvn global`` or ``none``): with per-utterance CMVN the statistics would have to be recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np
import torch

from fairseq_hkd.data.audio import SAMPLE_RATE
from fairseq_hkd.data.fbank import fbank, num_frames

NOISE_LEVELS_DBFS = (None, -80.0, -70.0, -60.0)  # None: digital silence
BANK_SECONDS = 2.0
MAX_FRAMES = num_frames(int(BANK_SECONDS * SAMPLE_RATE))  # the bank's length: the most silence one edge can get


@dataclass
class EdgeSilenceConfig:
    max_start: int = 0  # frames (10 ms)
    max_end: int = 0
    prob: float = 0.5

    def enabled(self) -> bool:
        return self.prob > 0 and (self.max_start > 0 or self.max_end > 0)


def silence_bank(cmvn: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> np.ndarray:
    """Normalised fbank frames of silence, one row of frames per level of ``NOISE_LEVELS_DBFS``:
    float32 [L, N, 80] (N = ``MAX_FRAMES``, the frames of ``BANK_SECONDS`` of 16 kHz audio)."""
    rng = np.random.default_rng(seed)
    n = int(BANK_SECONDS * SAMPLE_RATE)
    rows = []
    for level in NOISE_LEVELS_DBFS:
        wav = np.zeros(n, np.float32) if level is None else \
            (rng.standard_normal(n) * 10.0 ** (level / 20.0)).astype(np.float32)
        rows.append(np.asarray(cmvn(fbank(wav)), dtype=np.float32))
    return np.stack(rows)


def draw_padding(cfg: EdgeSilenceConfig, levels: int, rng: np.random.Generator) -> Tuple[int, int, int]:
    """(frames before, frames after, level index) of one utterance; (0, 0, 0) with probability 1 - prob."""
    if rng.random() >= cfg.prob:
        return 0, 0, 0
    start = int(rng.integers(0, cfg.max_start + 1))
    end = int(rng.integers(0, cfg.max_end + 1))
    return start, end, int(rng.integers(0, levels))


def pad_edges_batch(
    src: torch.Tensor, lengths: torch.Tensor, bank: np.ndarray, cfg: EdgeSilenceConfig, seeds: Sequence[Sequence[int]]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A new padded batch ``src'`` [B, T', F] and ``lengths'`` [B]: utterance b (its ``lengths[b]``
    frames of ``src`` [B, T, F]) between a[b] and e[b] silence frames of ``bank`` [L, N, F], drawn
    by ``draw_padding`` from ``np.random.default_rng(seeds[b])``; batch padding stays zero."""
    B, T, F = src.shape
    L, N, _ = bank.shape
    assert max(cfg.max_start, cfg.max_end) <= N, f"edge silence of at most {N} frames (the bank's length)"
    draws = [draw_padding(cfg, L, np.random.default_rng(list(seeds[b]))) for b in range(B)]
    new_lengths = lengths.clone()
    for b, (a, e, _) in enumerate(draws):
        new_lengths[b] += a + e
    out = src.new_zeros(B, int(new_lengths.max()), F)
    silence = torch.from_numpy(bank).to(device=src.device, dtype=src.dtype)
    for b, (a, e, level) in enumerate(draws):
        n = int(lengths[b])
        out[b, :a] = silence[level, :a]
        out[b, a: a + n] = src[b, :n]
        out[b, a + n: a + n + e] = silence[level, N - e:]  # e = 0: N: is empty
    return out, new_lengths
