"""Vectorized PyTorch implementation of the CIF gather (the CPU path).

Shapes: B batch, T frames, N tokens, C channels.

The gather computes, for every token j of utterance b,

    out[b, j] = sum_t (wl[b,t] * [il[b,t] == j] + wr[b,t] * [ir[b,t] == j]) * h[b, t]

Each frame feeds at most two tokens and the token ids are non-decreasing along
(frame, left, right), so the 2*B*T (frame, token, weight) entries, flattened with token id
b*N + j, are already sorted by output row. ``F.embedding_bag`` with per-sample weights then does
the whole forward in one fused pass over h (no [B, T, C] temporaries, no scatter). The backward
is the same gather the other way round plus two row dot products:

    grad_h[b, t] = wl[b,t] * g[b, il] + wr[b,t] * g[b, ir]     (embedding_bag over g, bags of 2)
    grad_wl[b, t] = g[b, il] . h[b, t],   grad_wr[b, t] = g[b, ir] . h[b, t]

grad_wr only differs from grad_wl on firing frames (il == ir elsewhere), so it is computed for
those frames only.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(h: Tensor) -> torch.dtype:
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _entries(wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor, num_tokens: int, dtype):
    """Flattened, sorted (token row, weight) entries: two per frame, [2*B*T] each."""
    B = il.size(0)
    base = (torch.arange(B, device=il.device) * num_tokens)[:, None, None]
    rows = (torch.stack((il, ir), dim=-1) + base).reshape(-1)
    weights = torch.stack((wl, wr), dim=-1).reshape(-1).to(dtype)
    return rows, weights


def gather_forward(
    h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor, num_tokens: int
) -> Tensor:
    """h [B, T, C], wl/wr [B, T] float, il/ir [B, T] long in [0, N) -> out [B, N, C] (h.dtype)."""
    B, T, C = h.shape
    dtype = _compute_dtype(h)
    rows, weights = _entries(wl, wr, il, ir, num_tokens, dtype)
    frames = torch.arange(B * T, device=h.device).repeat_interleave(2)
    offsets = torch.searchsorted(rows, torch.arange(B * num_tokens, device=h.device))
    out = F.embedding_bag(
        frames, h.reshape(B * T, C).to(dtype), offsets, mode="sum", per_sample_weights=weights
    )
    return out.view(B, num_tokens, C).to(h.dtype)


def _row_dot(x: Tensor, y: Tensor) -> Tensor:
    """x, y [R, C] -> [R] row-wise dot products without a [R, C] temporary."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).view(-1)


def gather_backward(
    grad_out: Tensor, h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """grad_out [B, N, C] -> (grad_h [B, T, C], grad_wl [B, T], grad_wr [B, T])."""
    B, T, C = h.shape
    N = grad_out.size(1)
    dtype = _compute_dtype(h)
    g = grad_out.reshape(B * N, C).to(dtype)
    h2 = h.reshape(B * T, C).to(dtype)
    rows, weights = _entries(wl, wr, il, ir, N, dtype)
    pairs = torch.arange(0, 2 * B * T, 2, device=h.device)
    grad_h = F.embedding_bag(rows, g, pairs, mode="sum", per_sample_weights=weights)

    rows = rows.view(B * T, 2)
    grad_wl = _row_dot(g.index_select(0, rows[:, 0]), h2)
    grad_wr = grad_wl.clone()
    firing = (rows[:, 1] != rows[:, 0]).nonzero().squeeze(1)
    grad_wr[firing] = _row_dot(g.index_select(0, rows[firing, 1]), h2.index_select(0, firing))
    return (
        grad_h.view(B, T, C).to(h.dtype),
        grad_wl.view(B, T).to(wl.dtype),
        grad_wr.view(B, T).to(wr.dtype),
    )
