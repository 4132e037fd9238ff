"""Choosing the CIF count in the runtime: the numpy form of ``CifGenerator.count_search_decode``.

The raw weights' count L_b proposes n = L_b - R .. L_b + R (at least 1, at most the frames of positive weight;
0 stays 0); each candidate is integrated with the weights scaled to n (``scale_alpha``, the
training rule of ``models/cif_middleware.py``) and searched; the candidate whose best hypothesis
has the best ``W * log p_CTC + (1 - W) * score`` wins (``ctc_log_likelihood``: the CTC head's
sequence log-likelihood over all alignments, blank ``<s>``, float64).

Torch-free (numpy only). Shapes: B utterances, M = 2R + 1 candidates, T encoder frames, V units.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["candidate_counts", "scale_alpha", "ctc_log_likelihood", "choose_candidates"]


def candidate_counts(predicted: np.ndarray, frames: np.ndarray, radius: int) -> np.ndarray:
    """predicted [B] (the raw weights' counts), frames [B] (the frames that can carry weight: alpha > 0;
    each holds at most one unit) -> [M, B] int64."""
    deltas = np.arange(-radius, radius + 1)[:, None]
    counts = np.minimum(np.maximum(predicted[None, :] + deltas, 1), frames[None, :])
    return np.where(predicted[None, :] > 0, counts, 0).astype(np.int64)


def scale_alpha(alpha: np.ndarray, targets: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """alpha [B, T] float32 (0 at padding), targets [B] -> weights [B, T] summing to targets[b]:
    alpha * S / (sum + eps), frames pushed above 1 capped at 1 and the rest rescaled (float32, as
    ``cif_middleware.scale_alpha``)."""
    alpha = alpha.astype(np.float32)
    target = targets.astype(np.float32)[:, None]
    eps = np.float32(eps)
    scaled = alpha * (target / (alpha.sum(axis=1, keepdims=True) + eps))
    capped = np.zeros(alpha.shape, dtype=bool)
    for _ in range(alpha.shape[1]):
        over = scaled > 1.0
        if not over.any():
            break
        capped |= over
        free = np.where(capped, 0.0, alpha.astype(np.float64))  # shared exactly, in float64 (as torch's)
        room = np.maximum(target.astype(np.float64) - capped.sum(axis=1, keepdims=True), 0.0)
        share = free / np.maximum(free.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        scaled = np.where(capped, np.float32(1.0), (share * room).astype(np.float32))
    return scaled.astype(np.float32)


def ctc_log_likelihood(lprobs: np.ndarray, target: Sequence[int], blank: int) -> float:
    """log p_CTC(target | x) for one utterance: lprobs [T, V] log-probabilities of its valid frames.
    -inf when the target cannot be emitted in T frames."""
    T = lprobs.shape[0]
    ext = [blank]
    for t in target:
        ext += [int(t), blank]
    S = len(ext)
    if T == 0:
        return 0.0 if S == 1 else -np.inf
    lp = lprobs.astype(np.float64)[:, ext]  # [T, S]
    ext_a = np.array(ext)
    # a label may skip the blank before it when it differs from the label two back
    skip = np.zeros(S, dtype=bool)
    skip[2:] = (ext_a[2:] != blank) & (ext_a[2:] != ext_a[:-2])
    alpha = np.full(S, -np.inf)
    alpha[0] = lp[0, 0]
    if S > 1:
        alpha[1] = lp[0, 1]
    for t in range(1, T):
        prev1 = np.full(S, -np.inf)
        prev1[1:] = alpha[:-1]
        prev2 = np.full(S, -np.inf)
        prev2[2:] = np.where(skip[2:], alpha[:-2], -np.inf)
        alpha = np.logaddexp(np.logaddexp(alpha, prev1), prev2) + lp[t]
    end = alpha[-1] if S == 1 else np.logaddexp(alpha[-1], alpha[-2])
    return float(end)


def choose_candidates(scores: np.ndarray, ctc: np.ndarray, ctc_weight: float, radius: int) -> np.ndarray:
    """scores, ctc [M, B] (best hypothesis's decoder score and CTC log-likelihood per candidate) ->
    [B] index of the chosen candidate (the first best; radius, i.e. L_b, when none is finite)."""
    joint = scores.astype(np.float64) if ctc_weight == 0 else ctc_weight * ctc + (1.0 - ctc_weight) * scores
    joint = np.where(np.isfinite(joint), joint, -np.inf)
    best = joint.argmax(axis=0)
    return np.where(np.isfinite(joint).any(axis=0), best, radius)
