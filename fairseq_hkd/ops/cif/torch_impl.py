"""Vectorized PyTorch implementation of the CIF op (the CPU path): the gather, and
``CifFunction``, plan + gather as one autograd node (what ``cif(impl="torch")`` runs).

Shapes: B batch, T frames, N tokens, C channels.

The gather computes, for every token j of utterance b,

    out[b, j] = sum_t (wl[b,t] * [il[b,t] == j] + wr[b,t] * [ir[b,t] == j]) * h[b, t]

Each frame feeds at most two tokens and the token ids are non-decreasing along
(frame, left, right), so the 2*B*T (frame, token, weight) entries, flattened with token id
b*N + j, are already sorted by output row. ``F.embedding_bag`` with per-sample weights then does
the whole forward in one fused pass over h (no [B, T, C] temporaries, no scatter). The backward
is the same pattern transposed (two more fused passes, see ``gather_backward``):

    grad_h[b, t] = wl[b,t] * g[b, il] + wr[b,t] * g[b, ir]
    grad_wl[b, t] = g[b, il] . h[b, t],   grad_wr[b, t] = g[b, ir] . h[b, t]
"""
from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq_hkd.ops.cif.plan import (
    plan_backward,
    plan_forward,
    resolve_num_tokens,
    unpack_state,
)


def _compute_dtype(h: Tensor) -> torch.dtype:
    return torch.float64 if h.dtype == torch.float64 else torch.float32


class Entries(NamedTuple):
    """The 2*B*T (frame, token row, weight) entries, two per frame (left, right), sorted by
    token row b*N + j. rows, frames [2*B*T] long; weights [2*B*T] in the compute dtype."""

    rows: Tensor
    frames: Tensor
    weights: Tensor


def make_entries(weights: Tensor, ids: Tensor, num_tokens: int, dtype: torch.dtype) -> Entries:
    """weights [B, T, 2] float, ids [B, T, 2] long in [0, N) (last axis: left, right) ->
    the flattened entries, rows b * N + token."""
    B, T, _ = ids.shape
    base = (torch.arange(B, device=ids.device) * num_tokens)[:, None, None]
    rows = (ids + base).view(-1)
    frames = torch.arange(B * T, device=ids.device).repeat_interleave(2)
    return Entries(rows, frames, weights.reshape(-1).to(dtype))


def bag_forward(h: Tensor, e: Entries, num_tokens: int) -> Tensor:
    """h [B, T, C] -> out [B, N, C] (h.dtype): one embedding_bag, bag = token row."""
    B, T, C = h.shape
    offsets = torch.searchsorted(e.rows, torch.arange(B * num_tokens, device=h.device))
    out = F.embedding_bag(e.frames, h.reshape(B * T, C).to(e.weights.dtype), offsets,
                          mode="sum", per_sample_weights=e.weights)
    return out.view(B, num_tokens, C).to(h.dtype)


def bag_backward(grad_out: Tensor, h: Tensor, e: Entries) -> Tuple[Tensor, Tensor]:
    """grad_out [B, N, C] -> (grad_h [B, T, C] (h.dtype), grad_w [B, T, 2] (left, right)).

    Two fused passes over the same entries as the forward: grad_h is the transposed gather,
    itself an embedding_bag (bag = frame, its two entries are rows of g); grad_w is ATen's
    per-sample-weight backward of an embedding_bag, which computes exactly
    grad_w[entry] = g[token row] . h[frame] (bags = frames, table = g) without building a
    [B, T, C] temporary. Chunked index_select + mul + sum took 2.5x longer.
    """
    B, T, C = h.shape
    dtype = e.weights.dtype
    g = grad_out.reshape(-1, C).to(dtype)
    offsets = torch.arange(0, 2 * B * T, 2, device=h.device)  # two entries per frame
    grad_h = F.embedding_bag(e.rows, g, offsets, mode="sum", per_sample_weights=e.weights)
    grad_w = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        h.reshape(B * T, C).to(dtype), g, e.rows, offsets, e.frames, 0, -1
    )  # mode 0 = sum, padding_idx -1 = none
    return grad_h.view(B, T, C).to(h.dtype), grad_w.view(B, T, 2)


def gather_forward(
    h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor, num_tokens: int
) -> Tensor:
    """h [B, T, C], wl/wr [B, T] float, il/ir [B, T] long in [0, N) -> out [B, N, C] (h.dtype)."""
    e = make_entries(torch.stack((wl, wr), dim=-1), torch.stack((il, ir), dim=-1), num_tokens,
                     _compute_dtype(h))
    return bag_forward(h, e, num_tokens)


def gather_backward(
    grad_out: Tensor, h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """grad_out [B, N, C] -> (grad_h [B, T, C], grad_wl [B, T], grad_wr [B, T])."""
    e = make_entries(torch.stack((wl, wr), dim=-1), torch.stack((il, ir), dim=-1),
                     grad_out.size(1), _compute_dtype(h))
    grad_h, grad_w = bag_backward(grad_out, h, e)
    return (
        grad_h,
        grad_w[..., 0].to(wl.dtype).contiguous(),  # copies: outputs may not alias
        grad_w[..., 1].to(wr.dtype).contiguous(),
    )


class CifFunction(torch.autograd.Function):
    """The whole CPU path as one autograd node: plan (``plan.py``) + gather, forward and
    backward. The same maths as ``cif_plan`` + the ``cif_gather`` custom op, without their two
    autograd nodes, the custom-op dispatch and the re-packing of the entries (measured: 1.50 ->
    1.22 ms for forward + backward at B, T, C = 8, 500, 256 on one CPU thread).

    forward(alpha [B, T], h [B, T, C], padding_mask, threshold, tail_threshold, max_tokens,
    allow_overflow) -> (embeddings [B, N, C], lengths [B], fire_mask [B, T],
    token_index [B, T]); differentiable in alpha and h.
    """

    @staticmethod
    def forward(ctx, alpha, h, padding_mask, threshold, tail_threshold, max_tokens,
                allow_overflow):
        B, T, C = h.shape
        bound = max_tokens if max_tokens is not None else T + 1
        w, ids, fire, lengths, state = plan_forward(alpha, padding_mask, threshold,
                                                    tail_threshold, bound)
        num = resolve_num_tokens(lengths, max_tokens, allow_overflow)
        k = ids[..., 0]
        token_index = k.clone() if padding_mask is None else k.masked_fill(padding_mask, -1)
        if padding_mask is not None:  # 0 * NaN is NaN: padded frames must hold zeros
            h = h.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        entries = (None, None, None)
        if B * T == 0 or num == 0:
            emb = h.new_zeros(B, num, C)
        else:
            h = h.contiguous()
            # spill-over ids (weight 0) are clamped into range
            entries = make_entries(w, ids.clamp(max=num - 1), num, _compute_dtype(h))
            emb = bag_forward(h, entries, num)
        ctx.state_fields = [f is not None for f in state]
        ctx.save_for_backward(h, padding_mask, *entries, *[f for f in state if f is not None])
        ctx.alpha_dtype = alpha.dtype
        ctx.mark_non_differentiable(lengths, fire, token_index)
        return emb, lengths, fire, token_index

    @staticmethod
    def backward(ctx, grad_emb, *unused):
        h, padding_mask, rows, frames, weights, *saved = ctx.saved_tensors
        if rows is None:  # no frames or no tokens: nothing was integrated
            return (h.new_zeros(h.shape[:2], dtype=ctx.alpha_dtype), torch.zeros_like(h),
                    None, None, None, None, None)
        grad_h, grad_w = bag_backward(grad_emb.contiguous(), h, Entries(rows, frames, weights))
        if padding_mask is not None:
            grad_h = grad_h.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        grad_alpha = plan_backward(unpack_state(saved, ctx.state_fields), grad_w)
        return grad_alpha.to(ctx.alpha_dtype), grad_h, None, None, None, None, None
