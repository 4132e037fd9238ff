"""SpecAugment (Park et al. 2019) without time warping, applied to training utterances only.

Defaults follow the authors' AISHELL-1 recipe: 2 frequency masks of width <= 27, 2 time masks of
width <= 50, applied with probability 1. ``adaptive_time_ratio`` > 0 caps each time mask at that share
of the utterance (Park et al. 2020, "adaptive"), so short utterances are not wiped out.
Masked values are set to ``mask_value`` (0 = the mean after CMVN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def spec_augment(feats: np.ndarray, cfg: SpecAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Mask a copy of ``feats`` [T, F]; widths drawn uniformly in [0, width], starts uniformly."""
    x = feats.copy()
    if rng.random() >= cfg.prob:
        return x
    T, F = x.shape
    for _ in range(cfg.freq_masks):
        w = int(rng.integers(0, min(cfg.freq_width, F) + 1))
        f0 = int(rng.integers(0, F - w + 1))
        x[:, f0: f0 + w] = cfg.mask_value
    max_t = cfg.time_width
    if cfg.adaptive_time_ratio > 0:
        max_t = min(max_t, int(cfg.adaptive_time_ratio * T))
    for _ in range(cfg.time_masks):
        w = int(rng.integers(0, min(max_t, T) + 1))
        t0 = int(rng.integers(0, T - w + 1))
        x[t0: t0 + w, :] = cfg.mask_value
    return x
