"""The sequential CIF loop in float64: the test oracle, never on the hot path.

This is the literal frame-by-frame rule (remainder "beta - a"); ``plan.py`` derives the parallel
form from it. Slow (a Python loop over B and T): tests and the benchmark only.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def cif_reference(
    alpha: Tensor,
    h: Tensor,
    padding_mask: Optional[Tensor] = None,
    threshold: float = 1.0,
    tail_threshold: Optional[float] = None,
) -> Tuple[List[Tensor], Tensor, Tensor]:
    """Sequential CIF on alpha [B, T], h [B, T, C], padding_mask [B, T] (True = pad).

    Returns (per-utterance float64 token tensors [L_b, C], fire_mask [B, T] bool,
    token_index [B, T] long, -1 on padding). Differentiable in alpha and h (float64 autograd).
    """
    B, T, C = h.shape
    alpha64, h64 = alpha.to(torch.float64), h.to(torch.float64)
    cap = min(1.0, threshold)
    fire_mask = torch.zeros(B, T, dtype=torch.bool)
    token_index = torch.full((B, T), -1, dtype=torch.long)
    out: List[Tensor] = []
    for b in range(B):
        acc = alpha64.new_zeros(())  # running weight a of the token being integrated
        state = h64.new_zeros(C)  # integrated state s
        tokens: List[Tensor] = []
        for t in range(T):
            if padding_mask is not None and bool(padding_mask[b, t]):
                continue
            a_t = alpha64[b, t].clamp(0.0, cap)
            token_index[b, t] = len(tokens)
            if float((acc + a_t).detach()) >= threshold:
                used = threshold - acc  # the remainder rule "beta - a"
                tokens.append(state + used * h64[b, t])
                acc = a_t - used
                state = acc * h64[b, t]
                fire_mask[b, t] = True
            else:
                acc = acc + a_t
                state = state + a_t * h64[b, t]
        if tail_threshold is not None and float(acc.detach()) >= tail_threshold:
            tokens.append(state * (threshold / acc))
        out.append(torch.stack(tokens) if tokens else h64.new_zeros(0, C))
    return out, fire_mask, token_index
