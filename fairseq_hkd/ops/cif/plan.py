"""The CIF plan: which token each frame feeds, and with what weight (parallel form).

Shapes: B batch, T frames, N output tokens.

Frame t covers the interval [P_t, S_t) of the running sum, P_t = S_{t-1} = sum_{u<t} a_u,
S_t = P_t + a_t (float64 cumsum; float32 drifts by whole fires on long inputs). Token j covers
[j*beta, (j+1)*beta). So frame t feeds

    token k_t = floor(P_t / beta)  with weight wl_t = min(S_t, (k_t+1)*beta) - P_t   ("left")
    token n_t = floor(S_t / beta)  with weight wr_t = S_t - n_t*beta if n_t > k_t else 0 ("right")

and fires (completes token k_t) when n_t > k_t. Because alpha is clamped to [0, min(1, beta)],
a frame completes at most one token (n_t - k_t <= 1). This is exactly the sequential rule with
the remainder "beta - a": on a fire the token receives beta - a of h_t and the leftover
a_t - (beta - a) starts the next token, so every emitted token integrates exactly beta.

The weights are returned as differentiable float64 tensors; the indices are constants (the fire
pattern is piecewise constant in alpha). Autograd through these [B, T] ops is cheap; the
[B, T, C] work is the gather in ``op.py``.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor


class CifPlan(NamedTuple):
    """What the embedding gather needs, plus the integer outputs of ``cif``.

    w_left, w_right [B, T] float64: weights including the tail scale; 0 for dropped tokens.
    idx_left, idx_right [B, T] long: token fed by each weight, clamped to [0, N-1].
    lengths [B] long, fire_mask [B, T] bool, token_index [B, T] long (-1 on padding).
    num_tokens: N (python int).
    """

    w_left: Tensor
    w_right: Tensor
    idx_left: Tensor
    idx_right: Tensor
    lengths: Tensor
    fire_mask: Tensor
    token_index: Tensor
    num_tokens: int


def clamp_alpha(alpha: Tensor, padding_mask: Optional[Tensor], threshold: float) -> Tensor:
    """alpha [B, T] -> float64 [B, T] clamped to [0, min(1, threshold)], 0 under the mask."""
    a = alpha.to(torch.float64).clamp(0.0, min(1.0, threshold))
    if padding_mask is not None:
        a = a.masked_fill(padding_mask, 0.0)
    return a


def resolve_num_tokens(lengths: Tensor, max_tokens: Optional[int], allow_overflow: bool) -> int:
    """N: lengths.max() when max_tokens is None; else max_tokens, checked unless allowed."""
    if max_tokens is None:
        return int(lengths.max()) if lengths.numel() > 0 else 0
    if not allow_overflow and lengths.numel() > 0:
        longest = int(lengths.max())  # host sync: pass allow_overflow=True to avoid it
        if longest > max_tokens:
            raise ValueError(
                f"cif: an utterance has {longest} tokens but max_tokens={max_tokens}; "
                "raise max_tokens, or pass allow_overflow=True to keep the first "
                "max_tokens tokens (lengths then still report the full counts)"
            )
    return int(max_tokens)


def _shift_right(x: Tensor) -> Tensor:
    """[B, T] -> [B, T] with x[:, t-1] at t and 0 at t = 0."""
    if x.size(1) == 0:
        return x
    return torch.nn.functional.pad(x[:, :-1], (1, 0))


def cif_plan(
    alpha: Tensor,
    padding_mask: Optional[Tensor],
    threshold: float,
    tail_threshold: Optional[float],
    max_tokens: Optional[int],
    allow_overflow: bool,
) -> CifPlan:
    """Compute the CIF plan for alpha [B, T] (see the module docstring)."""
    a = clamp_alpha(alpha, padding_mask, threshold)
    S = a.cumsum(1)
    P = _shift_right(S)
    # floor(S / beta); with beta = 1 the division is skipped so it is exact.
    n = (S if threshold == 1.0 else S / threshold).detach().floor().long()
    k = _shift_right(n)
    fire = n > k
    if S.size(1) > 0:
        fires, total = n[:, -1], S[:, -1]
    else:  # no frames: no tokens
        fires, total = n.new_zeros(n.size(0)), S.new_zeros(S.size(0))
    residual = total - fires.to(S.dtype) * threshold

    # 1. Tail: one more token from the leftover weight, renormalised to a full token.
    if tail_threshold is not None:
        tail = residual.detach() >= tail_threshold
        safe = torch.where(tail, residual, torch.ones_like(residual))
        tail_scale = torch.where(tail, threshold / safe, torch.ones_like(residual))
    else:
        tail = torch.zeros_like(fires, dtype=torch.bool)
        tail_scale = torch.ones_like(residual)
    lengths = fires + tail.long()

    # 2. Output size N and the overflow rule.
    num_tokens = resolve_num_tokens(lengths, max_tokens, allow_overflow)

    # 3. Weights: left part of each frame, right part of firing frames, scaled per token.
    wl = torch.where(fire, (k + 1).to(S.dtype) * threshold - P, a)
    wr = torch.where(fire, S - n.to(S.dtype) * threshold, torch.zeros_like(S))

    def token_factor(tok: Tensor) -> Tensor:
        full = tok < fires[:, None]
        is_tail = (tok == fires[:, None]) & tail[:, None]
        factor = torch.where(is_tail, tail_scale[:, None], torch.zeros_like(S))
        factor = torch.where(full, torch.ones_like(S), factor)
        return torch.where(tok < num_tokens, factor, torch.zeros_like(S))

    wl = wl * token_factor(k)
    wr = wr * token_factor(n)
    top = max(num_tokens - 1, 0)
    token_index = k if padding_mask is None else k.masked_fill(padding_mask, -1)
    return CifPlan(
        w_left=wl,
        w_right=wr,
        idx_left=k.clamp(max=top),
        idx_right=n.clamp(max=top),
        lengths=lengths,
        fire_mask=fire,
        token_index=token_index,
        num_tokens=num_tokens,
    )
