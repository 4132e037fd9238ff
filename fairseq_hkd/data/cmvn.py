"""Cepstral mean and variance normalisation of [T, F] features: per utterance, or global with
stats from ``fairseq-hkd-cmvn`` (``cmvn.npz``: ``mean`` [80], ``std`` [80], ``count`` and the float64
sums they came from), or none. ``build_cmvn(kind, stats_path)`` returns the callable the dataset uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from fairseq_hkd.data.fbank import NUM_MEL_BINS
from fairseq_hkd.errors import UserError, UserFileNotFoundError

CMVN_TYPES = ("global", "utterance", "none")


def utterance_cmvn(feats: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-utterance mean/variance normalisation of [T, F] (statistics in float64)."""
    x = feats.astype(np.float64)
    mean = x.mean(axis=0)
    std = np.sqrt(np.maximum(x.var(axis=0), eps * eps))
    return ((x - mean) / std).astype(np.float32)


class GlobalCmvn:
    """Global mean/variance normalisation with stats from ``fairseq-hkd-cmvn``."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise UserFileNotFoundError(
                f"global CMVN stats {path} not found: run `fairseq-hkd-cmvn DATA_DIR --split train` "
                "or use --cmvn utterance"
            )
        stats = np.load(path)
        self.path = path
        self.mean = stats["mean"].astype(np.float32)
        self.std = stats["std"].astype(np.float32)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        if feats.shape[1] != self.mean.shape[0]:
            raise UserError(f"CMVN stats {self.path} have dim {self.mean.shape[0]}, features have {feats.shape[1]}")
        return (feats - self.mean) / self.std


class CmvnAccumulator:
    """Float64 sums for global CMVN stats."""

    def __init__(self, dim: int = NUM_MEL_BINS):
        self.count = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)

    def add(self, feats: np.ndarray) -> None:
        x = feats.astype(np.float64)
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sumsq += (x * x).sum(axis=0)

    def stats(self, eps: float = 1e-5) -> Dict[str, np.ndarray]:
        if self.count == 0:
            raise ValueError("no frames accumulated for CMVN")
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - mean * mean, eps * eps)
        return {"mean": mean, "std": np.sqrt(var), "count": np.int64(self.count), "sum": self.sum, "sumsq": self.sumsq}


def build_cmvn(kind: str, stats_path: Optional[str] = None):
    """``global`` | ``utterance`` | ``none`` -> callable [T, F] -> [T, F]."""
    if kind == "global":
        return GlobalCmvn(stats_path)
    if kind == "utterance":
        return utterance_cmvn
    if kind == "none":
        return lambda x: x
    raise UserError(f"unknown --cmvn {kind!r}: choose one of {', '.join(CMVN_TYPES)}")
