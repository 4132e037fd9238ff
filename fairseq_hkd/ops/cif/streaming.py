"""CIF over a stream of chunks with carried state (inference; no autograd).

Shapes: B batch, t frames of the current chunk, C channels.

The whole-utterance op (``plan.py``) places fires with a float64 running sum
``S_t = sum_{u<=t} a_u`` of the clamped weights: frame t fires when ``floor(S_t / beta)`` steps
up. Carrying ``S`` across chunks reproduces it *bitwise*: the chunk's running sum is the
cumulative sum of ``[S_prev, a_1, .., a_t]``, which adds in the same order as the whole
sequence's cumulative sum. So chunked and whole-utterance CIF fire at the same frames for any
chunking, and each token gets the same (left, right) weights from each frame. The token being
integrated at a chunk boundary is carried as a float64 partial state ``sum w * h`` and completed
in a later chunk; ``finish`` applies the tail rule (leftover ``r >= tail_threshold`` -> one more
token, ``partial * beta / r``), as the op does at the end of an utterance.

Usage::

    state = CifStream.start(batch_size=1, channels=C)
    for alpha_chunk, h_chunk in chunks:                 # [B, t], [B, t, C]
        tokens, state = cif_stream_step(alpha_chunk, h_chunk, state)
        # tokens.embeddings[b]: [n_b, C] tokens completed in this chunk,
        # tokens.fire_frames[b]: their fire frames, counted from the start of the stream
    tail, state = cif_stream_finish(state, tail_threshold=0.5)
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["CifStream", "CifChunkTokens", "cif_stream_step", "cif_stream_finish"]


class CifStream(NamedTuple):
    """State carried between chunks.

    total [B] float64: running sum S of the clamped weights so far.
    partial [B, C] float64: sum of w * h of the token being integrated.
    fired [B] long: tokens completed so far (= floor(total / beta)).
    frames [B] long: frames consumed so far (padding excluded).
    """

    total: Tensor
    partial: Tensor
    fired: Tensor
    frames: Tensor

    @staticmethod
    def start(batch_size: int, channels: int, device=None) -> "CifStream":
        return CifStream(torch.zeros(batch_size, dtype=torch.float64, device=device),
                         torch.zeros(batch_size, channels, dtype=torch.float64, device=device),
                         torch.zeros(batch_size, dtype=torch.long, device=device),
                         torch.zeros(batch_size, dtype=torch.long, device=device))


class CifChunkTokens(NamedTuple):
    """Tokens completed in one chunk: embeddings[b] [n_b, C] (h's dtype); fire_frames[b] [n_b]
    long, the frame (from the start of the stream) whose weight completed each token."""

    embeddings: List[Tensor]
    fire_frames: List[Tensor]


@torch.no_grad()
def cif_stream_step(alpha: Tensor, h: Tensor, state: CifStream, padding_mask: Optional[Tensor] = None,
                    threshold: float = 1.0) -> Tuple[CifChunkTokens, CifStream]:
    """Integrate one chunk. alpha [B, t], h [B, t, C], padding_mask [B, t] (True = pad: a frame
    beyond a stream's end in this chunk; such frames must not be followed by real ones).

    Returns the tokens completed in this chunk and the new state."""
    if alpha.dim() != 2 or h.dim() != 3 or h.shape[:2] != alpha.shape:
        raise ValueError(f"cif_stream_step: expected alpha [B, t] and h [B, t, C], got {tuple(alpha.shape)} "
                         f"and {tuple(h.shape)}")
    if h.shape[0] != state.total.shape[0] or h.shape[2] != state.partial.shape[1]:
        raise ValueError(f"cif_stream_step: chunk [B={h.shape[0]}, C={h.shape[2]}] does not match the stream "
                         f"state [B={state.total.shape[0]}, C={state.partial.shape[1]}]")
    if not threshold > 0:
        raise ValueError(f"cif_stream_step: threshold must be > 0, got {threshold}")
    B, t, C = h.shape
    a = alpha.to(torch.float64).clamp(0.0, min(1.0, threshold))
    valid = torch.ones_like(a, dtype=torch.bool) if padding_mask is None else ~padding_mask
    a = a.masked_fill(~valid, 0.0)
    # running sums in the whole stream's order: cumsum of [S_prev, a_1 .. a_t]
    S = torch.cat([state.total.unsqueeze(1), a], dim=1).cumsum(1)  # [B, t + 1]
    P, S = S[:, :-1], S[:, 1:]
    scale = 1.0 if threshold == 1.0 else threshold
    n = (S if threshold == 1.0 else S / scale).floor()
    k = (P if threshold == 1.0 else P / scale).floor()
    fire = (n > k) & valid  # [B, t]
    w_left = torch.where(fire, (k + 1.0) * threshold - P, a)
    w_right = a - w_left
    h64 = h.to(torch.float64).masked_fill(~valid.unsqueeze(-1), 0.0)
    base = state.fired.to(torch.float64).unsqueeze(1)  # token ids relative to the one in progress
    rel_l, rel_r = (k - base).long(), (n - base).long()  # [B, t], 0 = the token in progress
    n_fired = fire.sum(1)  # [B]
    R = int(n_fired.max()) + 1 if t > 0 else 1
    acc = h.new_zeros(B, R, C, dtype=torch.float64)
    acc[:, 0] = state.partial
    acc.scatter_add_(1, rel_l.clamp(0, R - 1).unsqueeze(-1).expand(B, t, C), w_left.unsqueeze(-1) * h64)
    acc.scatter_add_(1, rel_r.clamp(0, R - 1).unsqueeze(-1).expand(B, t, C), w_right.unsqueeze(-1) * h64)
    frame_ids = state.frames.unsqueeze(1) + valid.long().cumsum(1) - 1  # [B, t] absolute frame numbers
    embeddings, fire_frames = [], []
    for b in range(B):
        nb = int(n_fired[b])
        embeddings.append(acc[b, :nb].to(h.dtype))
        fire_frames.append(frame_ids[b][fire[b]])
    partial = acc[torch.arange(B, device=h.device), n_fired]
    new_state = CifStream(S[:, -1] if t > 0 else state.total, partial, state.fired + n_fired,
                          state.frames + valid.sum(1))
    return CifChunkTokens(embeddings, fire_frames), new_state


@torch.no_grad()
def cif_stream_finish(state: CifStream, tail_threshold: Optional[float] = 0.5, threshold: float = 1.0,
                      dtype: torch.dtype = torch.float32) -> Tuple[List[Tensor], CifStream]:
    """End of stream: per utterance a [1, C] tail token when the leftover weight r = total -
    fired * beta reaches ``tail_threshold`` (renormalised: partial * beta / r), else [0, C].
    The state is returned with the tail counted and the partial state cleared."""
    residual = state.total - state.fired.to(torch.float64) * threshold  # [B]
    emit = torch.zeros_like(residual, dtype=torch.bool) if tail_threshold is None else residual >= tail_threshold
    tails = []
    for b in range(state.total.shape[0]):
        if bool(emit[b]):
            tails.append((state.partial[b] * (threshold / residual[b])).unsqueeze(0).to(dtype))
        else:
            tails.append(state.partial.new_zeros(0, state.partial.shape[1], dtype=dtype))
    return tails, CifStream(state.total, torch.zeros_like(state.partial), state.fired + emit.long(), state.frames)
