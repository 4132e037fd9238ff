"""A factor per training utterance: U(min, max) with probability ``prob``, else 1. What tempo perturbation
(``data/tempo.py``) and VTLP (``data/vtlp.py``) draw, each from the utterance's own seeded generator."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FactorRange", "draw_factor"]


@dataclass
class FactorRange:
    min_factor: float = 1.0
    max_factor: float = 1.0
    prob: float = 1.0

    def enabled(self) -> bool:
        return self.prob > 0 and (self.min_factor != 1.0 or self.max_factor != 1.0)


def draw_factor(cfg: FactorRange, rng: np.random.Generator) -> float:
    """One utterance's factor: U(min, max) with probability ``prob``, else 1."""
    if rng.random() >= cfg.prob:
        return 1.0
    return float(rng.uniform(cfg.min_factor, cfg.max_factor))
