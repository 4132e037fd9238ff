"""CIF integration in numpy float64: the inference form of ``fairseq_hkd.ops.cif`` (no gradients,
no ``max_tokens``), for the ONNX runtime.

Shapes: B batch, T encoder frames, C channels, N tokens (max over the batch).

The fire plan is ``fairseq_hkd/ops/cif/plan.py``'s ``plan_forward``, op for op in float64:
alpha clamped to [0, min(1, beta)] and zeroed at padding, S = cumsum (float64), P = S shifted
right, token ids k = floor(P / beta), n = floor(S / beta) (no division when beta = 1), a fire
where n > k; the leftover r = S_T - fires * beta becomes a last token when r >= tail_threshold,
scaled by beta / r. Given the same alpha, fires land on the same frames as the op's. The
embeddings are accumulated in float64 and returned as float32 (the op accumulates float32
inputs in float32; the two agree to ~1e-6).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = ["CifResult", "cif_numpy", "fire_frames"]


class CifResult(NamedTuple):
    """embeddings [B, N, C] float32 (0 beyond lengths[b]); lengths [B] int64 (fires + tail);
    fire_mask [B, T] bool (frame t completed a token)."""

    embeddings: np.ndarray
    lengths: np.ndarray
    fire_mask: np.ndarray


def cif_numpy(alpha: np.ndarray, h: np.ndarray, lengths: np.ndarray, threshold: float = 1.0,
              tail_threshold: Optional[float] = 0.5) -> CifResult:
    """Integrate h [B, T, C] with weights alpha [B, T]; frames t >= lengths[b] [B] are padding.

    threshold: beta; tail_threshold: emit the leftover as a last token when it is >= this (None:
    never). See the module docstring for the rule.
    """
    if alpha.ndim != 2 or h.ndim != 3 or h.shape[:2] != alpha.shape:
        raise ValueError(f"cif_numpy: expected alpha [B, T] and h [B, T, C], got {alpha.shape} and {h.shape}")
    B, T, C = h.shape
    padding = np.arange(T)[None, :] >= np.asarray(lengths)[:, None]
    # 1. the plan (plan_forward, float64)
    a = np.clip(alpha.astype(np.float64), 0.0, min(1.0, threshold))
    a[padding] = 0.0
    S = np.cumsum(a, axis=1)
    P = np.pad(S[:, :-1], ((0, 0), (1, 0)))
    n = np.floor(S if threshold == 1.0 else S / threshold)
    k = np.pad(n[:, :-1], ((0, 0), (1, 0)))
    fire = n > k
    fires = n[:, -1:] if T > 0 else np.zeros((B, 1))
    total = S[:, -1:] if T > 0 else np.zeros((B, 1))
    factor_tail = np.zeros((B, 1))
    tail = np.zeros((B, 1), dtype=bool)
    if tail_threshold is not None:
        residual = total - fires * threshold
        tail = residual >= tail_threshold
        factor_tail = np.where(tail, threshold / np.where(tail, residual, 1.0), 0.0)
    out_lengths = (fires.astype(np.int64) + tail.astype(np.int64))[:, 0]
    base_l = np.where(fire, (k + 1.0) * threshold - P, a)
    base_r = a - base_l
    # token factor: 1 for completed tokens (id < fires), the tail factor for the leftover token
    w_l = base_l * np.where(k < fires, 1.0, factor_tail)
    w_r = base_r * np.where(n < fires, 1.0, factor_tail)
    # 2. the gather: out[b, j] = sum_t (w_l [k_t == j] + w_r [n_t == j]) h[b, t]
    N = int(out_lengths.max()) if B > 0 else 0
    out = np.zeros((B, N, C), dtype=np.float64)
    h64 = h.astype(np.float64)
    for b in range(B):
        for ids, w in ((k[b], w_l[b]), (n[b], w_r[b])):
            keep = (w != 0.0) & (ids < out_lengths[b])
            if keep.any():
                np.add.at(out[b], ids[keep].astype(np.int64), w[keep, None] * h64[b, keep])
    return CifResult(out.astype(np.float32), out_lengths, fire & ~padding)


def fire_frames(fire_mask: np.ndarray, cif_lengths: np.ndarray, encoder_lengths: np.ndarray):
    """Per utterance, the encoder frame that completed each CIF token (int64 [L_b]); a tail token
    gets the last valid frame (``cif_generator.fire_frames``)."""
    out = []
    for b in range(fire_mask.shape[0]):
        valid = int(encoder_lengths[b])
        f = np.nonzero(fire_mask[b, :valid])[0].astype(np.int64)
        n = int(cif_lengths[b])
        if n > f.size:
            f = np.concatenate([f, np.full(n - f.size, max(valid - 1, 0), dtype=np.int64)])
        out.append(f[:n])
    return out
