"""Vectorized PyTorch implementation of the CIF gather (the CPU path).

Shapes: B batch, T frames, N tokens, C channels.

The gather computes, for every token j of utterance b,

    out[b, j] = sum_t (wl[b,t] * [il[b,t] == j] + wr[b,t] * [ir[b,t] == j]) * h[b, t]

Each frame feeds at most two tokens and the token ids are non-decreasing along
(frame, left, right), so the 2*B*T (frame, token, weight) entries, flattened with token id
b*N + j, are already sorted by output row. ``F.embedding_bag`` with per-sample weights then does
the whole forward in one fused pass over h (no [B, T, C] temporaries, no scatter). The backward
gathers g at each frame's two tokens (one pass over h, in cache-sized chunks of frames):

    grad_h[b, t] = wl[b,t] * g[b, il] + wr[b,t] * g[b, ir]
    grad_wl[b, t] = g[b, il] . h[b, t],   grad_wr[b, t] = g[b, ir] . h[b, t]
"""
import threading
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


CHUNK_ROWS = 512  # frames per backward chunk: its [CHUNK_ROWS, C] temporaries stay in cache
_SCRATCH = threading.local()


def _scratch(rows: int, C: int, like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Three [rows, C] scratch buffers, kept per thread between calls: fresh buffers this size
    come from mmap and page-fault on every call, which costs more than the work in them."""
    key = (like.dtype, like.device, C)
    if getattr(_SCRATCH, "key", None) != key or _SCRATCH.buffers[0].size(0) < rows:
        _SCRATCH.key, _SCRATCH.buffers = key, [like.new_empty(CHUNK_ROWS, C) for _ in range(3)]
    return tuple(buf[:rows] for buf in _SCRATCH.buffers)


def gather_backward(
    grad_out: Tensor, h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """grad_out [B, N, C] -> (grad_h [B, T, C], grad_wl [B, T], grad_wr [B, T]).

    One pass over h in chunks of frames: gather g at the left and right tokens, dot with h,
    and combine into grad_h while the chunk is in cache.
    """
    B, T, C = h.shape
    N = grad_out.size(1)
    dtype = _compute_dtype(h)
    g = grad_out.reshape(B * N, C).to(dtype)
    h2 = h.reshape(B * T, C).to(dtype)
    base = (torch.arange(B, device=h.device) * N)[:, None]
    rows_l, rows_r = (il + base).reshape(-1), (ir + base).reshape(-1)
    w_l, w_r = wl.reshape(-1).to(dtype), wr.reshape(-1).to(dtype)

    grad_h = torch.empty_like(h2)
    grad_wl, grad_wr = h2.new_empty(B * T), h2.new_empty(B * T)
    rows = min(CHUNK_ROWS, B * T)
    g_left, g_right, prod = _scratch(rows, C, h2)
    for start in range(0, B * T, rows):
        end = min(start + rows, B * T)
        n = end - start
        gl, gr, tmp, hc, gh = g_left[:n], g_right[:n], prod[:n], h2[start:end], grad_h[start:end]
        torch.index_select(g, 0, rows_l[start:end], out=gl)
        torch.index_select(g, 0, rows_r[start:end], out=gr)
        torch.sum(torch.mul(gl, hc, out=tmp), -1, out=grad_wl[start:end])
        torch.sum(torch.mul(gr, hc, out=tmp), -1, out=grad_wr[start:end])
        torch.mul(gl, w_l[start:end, None], out=gh)
        gh.addcmul_(gr, w_r[start:end, None])
    return (
        grad_h.view(B, T, C).to(h.dtype),
        grad_wl.view(B, T).to(wl.dtype),
        grad_wr.view(B, T).to(wr.dtype),
    )
