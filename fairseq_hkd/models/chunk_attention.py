"""Chunk masks for streaming-capable encoders, and relative-position attention under a mask or over
cached left context.

Shapes: B batch, T frames, T1 query frames, T2 key frames (cached left context + the chunk), H heads,
d_k head size, D model size.

Chunk attention (U2 / WeNet's ``subsequent_chunk_mask``): frames are grouped in chunks of ``chunk``
frames; a frame attends to every frame of its own chunk and of the ``left_chunks`` chunks before it
(``left_chunks`` < 0: all earlier chunks), never to a later chunk. So a chunk's outputs depend only
on frames up to its end, and a chunk-by-chunk forward pass with the left context's keys and values
cached gives the same output as one masked pass over the whole sequence.

Dynamic chunk training (U2's rule, :func:`sample_chunk`): per batch draw r in [1, T'_max]; above
T'_max / 2 the batch is trained with full context, otherwise with chunk (r mod max_chunk) + 1. One
model then serves every chunk size at inference, and full context.

:func:`rel_pos_attention` is fairseq's ``RelPositionMultiHeadedAttention`` (ESPnet's, Transformer-XL
positional terms) with the same parameters, generalised to T1 != T2 (queries are the last T1 of the
T2 keys) and to a [B, T1, T2] mask; it reads the module's weights, so checkpoints are unchanged.

Both it and fairseq's module (through :func:`float32_softmax_attention`) take the softmax of the
attention scores in float32 when the products ran in bf16/fp16 (CPU bf16 autocast keeps softmax in
its input's dtype); in float32 they compute exactly what they computed before.
"""
import math
from typing import Optional, Tuple

import torch
from fairseq.modules.espnet_multihead_attention import RelPositionMultiHeadedAttention
from torch import Tensor

__all__ = ["chunk_attention_mask", "sample_chunk", "rel_pos_slice", "rel_pos_attention", "project_kv",
           "float32_softmax_attention"]


class _Float32SoftmaxRelPosAttention(RelPositionMultiHeadedAttention):
    """fairseq's ``RelPositionMultiHeadedAttention`` with its softmax in float32 (same parameters)."""

    def forward_attention(self, value, scores, mask):
        """value [B, H, T2, d_k], scores [B, H, T1, T2], mask [B, T2] (True = padding) -> [B, T1, D]."""
        scores = scores.float()
        if mask is not None:
            scores = scores.masked_fill(mask.unsqueeze(1).unsqueeze(2).to(bool), float("-inf"))
        # fairseq keeps the probabilities in ``self.attn``; held there they kept the last batch's graph
        # alive and made the module impossible to deepcopy (fairseq-train --store-ema)
        attn = torch.softmax(scores, dim=-1)
        x = torch.matmul(self.dropout(attn).to(value.dtype), value)  # [B, H, T1, d_k]
        return self.linear_out(x.transpose(1, 2).contiguous().view(value.size(0), -1, self.h * self.d_k))


def float32_softmax_attention(attn: RelPositionMultiHeadedAttention) -> RelPositionMultiHeadedAttention:
    """The same module (parameters untouched, no new random draws) with its softmax in float32."""
    if type(attn) is not RelPositionMultiHeadedAttention:
        raise TypeError(f"expected fairseq's RelPositionMultiHeadedAttention, got {type(attn).__name__}")
    attn.__class__ = _Float32SoftmaxRelPosAttention
    return attn


def chunk_attention_mask(size: int, chunk: int, left_chunks: int = -1, device=None) -> Tensor:
    """[size, size] bool, True where query frame i may attend to key frame j (same chunk, or one of
    the ``left_chunks`` chunks before it; < 0: all earlier chunks)."""
    if chunk < 1:
        raise ValueError(f"chunk size must be >= 1 frame, got {chunk}")
    c = torch.div(torch.arange(size, device=device), chunk, rounding_mode="floor")
    allowed = c[None, :] <= c[:, None]
    if left_chunks >= 0:
        allowed &= c[None, :] >= c[:, None] - left_chunks
    return allowed


def sample_chunk(max_len: int, max_chunk: int, generator: Optional[torch.Generator] = None) -> int:
    """U2's dynamic chunk draw for one batch of T'_max = ``max_len`` output frames: 0 (= full context)
    for about half the batches, else a chunk in 1..``max_chunk`` (uniform-ish: (r mod max_chunk) + 1)."""
    if max_len < 1:
        return 0
    r = int(torch.randint(1, max_len + 1, (1,), generator=generator))
    if r > max_len // 2:
        return 0
    return r % max_chunk + 1


def rel_pos_slice(embed_positions, t1: int, t2: int) -> Tensor:
    """Relative positional encodings for queries that are the last ``t1`` of ``t2`` keys:
    [t1 + t2 - 1, 1, D], entry m for relative position (query - key) = t2 - 1 - m. For t1 == t2
    this is exactly what fairseq's ``RelPositionalEncoding.forward`` returns."""
    pe_module = embed_positions
    pe_module.extend_pe(torch.zeros(1, max(t1, t2), device=pe_module.pe.device, dtype=pe_module.pe.dtype))
    centre = pe_module.pe.size(1) // 2
    return pe_module.pe[:, centre - t2 + 1: centre + t1].transpose(0, 1)


def project_kv(attn, x: Tensor) -> Tuple[Tensor, Tensor]:
    """x [T, B, D] (the layer-normed input) -> keys, values [B, H, T, d_k]."""
    B, T = x.size(1), x.size(0)
    xb = x.transpose(0, 1)
    k = attn.linear_k(xb).view(B, T, attn.h, attn.d_k).transpose(1, 2)
    v = attn.linear_v(xb).view(B, T, attn.h, attn.d_k).transpose(1, 2)
    return k, v


def rel_pos_attention(attn, query: Tensor, k: Tensor, v: Tensor, pos_emb: Tensor,
                      mask: Optional[Tensor] = None) -> Tensor:
    """Relative-position multi-head attention with fairseq's ``RelPositionMultiHeadedAttention`` weights.

    Args:
        attn: the layer's ``RelPositionMultiHeadedAttention``.
        query: [T1, B, D] layer-normed inputs of the query frames (the last T1 of the T2 keys).
        k, v: [B, H, T2, d_k] projected keys and values (cached left context, then the query frames).
        pos_emb: [T1 + T2 - 1, 1, D] from :func:`rel_pos_slice`.
        mask: [B, T1, T2] or [T1, T2] bool, True = may NOT attend (None: attend to all).
    Returns:
        [T1, B, D]. Rows with every key masked give 0 before the output projection.
    """
    T1, B, _ = query.shape
    T2 = k.size(2)
    q = attn.linear_q(query.transpose(0, 1)).view(B, T1, attn.h, attn.d_k)
    q_u = (q + attn.pos_bias_u).transpose(1, 2)  # [B, H, T1, d_k]
    q_v = (q + attn.pos_bias_v).transpose(1, 2)
    matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))  # [B, H, T1, T2]
    p = attn.linear_pos(pos_emb.transpose(0, 1)).view(1, -1, attn.h, attn.d_k).transpose(1, 2)
    matrix_bd = torch.matmul(q_v, p.transpose(-2, -1))  # [B, H, T1, T1 + T2 - 1]
    # query i (absolute T2 - T1 + i), key j: relative position T2 - T1 + i - j <-> entry T1 - 1 - i + j
    idx = (T1 - 1 - torch.arange(T1, device=q.device))[:, None] + torch.arange(T2, device=q.device)[None, :]
    matrix_bd = matrix_bd.gather(-1, idx.expand(B, attn.h, T1, T2))
    # scores and softmax in float32 even when the products ran in bf16/fp16 (CPU bf16 autocast does
    # not promote softmax; fairseq's own attention does the same with utils.softmax(dtype=float32))
    scores = (matrix_ac.float() + matrix_bd.float()) / math.sqrt(attn.d_k)
    if mask is not None:
        m = mask.unsqueeze(1) if mask.dim() == 3 else mask[None, None]
        scores = scores.masked_fill(m, float("-inf"))
        weights = torch.softmax(scores, dim=-1).masked_fill(m, 0.0)  # all-masked rows: NaN -> 0
    else:
        weights = torch.softmax(scores, dim=-1)
    x = torch.matmul(attn.dropout(weights).to(v.dtype), v)  # [B, H, T1, d_k]
    x = x.transpose(1, 2).reshape(B, T1, attn.h * attn.d_k)
    return attn.linear_out(x).transpose(0, 1)
