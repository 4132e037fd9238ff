"""SpecAugment (Park et al. 2019) without time warping, applied to training updates only.

Defaults follow the authors' AISHELL-1 recipe: 2 frequency masks of width <= 27, 2 time masks of
width <= 50, applied with probability 1. ``adaptive_time_ratio`` > 0 caps each time mask at that share
of the utterance (Park et al. 2020, "adaptive"), so short utterances are not wiped out.
Masked values are set to ``mask_value`` (0 = the mean after CMVN).

The ``cif_asr`` task applies it to collated batches in ``train_step`` (``spec_augment_batch``), never in
the dataset, so decoding and validation of any split (a training split included) see clean features.
Each utterance draws its masks from its own generator, seeded by the caller (the task uses
(seed, update number, utterance index)), so masks do not depend on batching, process or resumption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 2
    time_width: int = 50
    adaptive_time_ratio: float = 0.0
    prob: float = 1.0
    mask_value: float = 0.0

    def enabled(self) -> bool:
        return self.prob > 0 and (self.freq_masks > 0 or self.time_masks > 0)


def draw_masks(T: int, F: int, cfg: SpecAugmentConfig, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Masked frames [T] and masked frequency bins [F] (bool) of one utterance of T frames;
    widths drawn uniformly in [0, width], starts uniformly; nothing with probability 1 - prob."""
    time_mask, freq_mask = np.zeros(T, dtype=bool), np.zeros(F, dtype=bool)
    if rng.random() >= cfg.prob:
        return time_mask, freq_mask
    for _ in range(cfg.freq_masks):
        w = int(rng.integers(0, min(cfg.freq_width, F) + 1))
        f0 = int(rng.integers(0, F - w + 1))
        freq_mask[f0: f0 + w] = True
    max_t = cfg.time_width
    if cfg.adaptive_time_ratio > 0:
        max_t = min(max_t, int(cfg.adaptive_time_ratio * T))
    for _ in range(cfg.time_masks):
        w = int(rng.integers(0, min(max_t, T) + 1))
        t0 = int(rng.integers(0, T - w + 1))
        time_mask[t0: t0 + w] = True
    return time_mask, freq_mask


def spec_augment(feats: np.ndarray, cfg: SpecAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Mask a copy of one utterance's ``feats`` [T, F]."""
    x = feats.copy()
    time_mask, freq_mask = draw_masks(x.shape[0], x.shape[1], cfg, rng)
    x[time_mask[:, None] | freq_mask[None, :]] = cfg.mask_value
    return x


def spec_augment_batch(
    src: torch.Tensor, lengths: torch.Tensor, cfg: SpecAugmentConfig, seeds: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Mask a padded batch ``src`` [B, T, F] (a new tensor, same device/dtype) given ``lengths`` [B];
    utterance b draws its masks from ``np.random.default_rng(seeds[b])`` over its own ``lengths[b]``
    frames, so padding is never touched and a mask does not depend on the rest of the batch."""
    B, T, F = src.shape
    time_mask, freq_mask = np.zeros((B, T), dtype=bool), np.zeros((B, F), dtype=bool)
    for b, n in enumerate(lengths.tolist()):
        time_mask[b, :n], freq_mask[b] = draw_masks(n, F, cfg, np.random.default_rng(list(seeds[b])))
    valid = torch.arange(T, device=src.device)[None, :] < lengths.to(src.device)[:, None]  # [B, T]
    mask = torch.from_numpy(time_mask).to(src.device)[:, :, None] | torch.from_numpy(freq_mask).to(src.device)[:, None, :]
    return src.masked_fill(mask & valid[:, :, None], cfg.mask_value)
