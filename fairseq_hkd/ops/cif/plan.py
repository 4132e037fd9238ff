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

The weights are differentiable (hand-written backward); the indices are constants (the fire
pattern is piecewise constant in alpha). This [B, T] work is cheap; the [B, T, C] work is the
gather in ``op.py``.
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


class _TorchPlan(torch.autograd.Function):
    """The plan in PyTorch with a hand-written backward (alpha [B, T] -> weights, indices).

    Backward (GL, GR = grads of wl, wr; f = token factor, see triton_plan.py for the
    derivation): dL/da_u = GL_u f_{k_u} + sum_{t >= u, fire_t} (GR_t f_{n_t} - GL_t f_{k_t})
    + dL/dr, times the clamp/mask gradient; ~15 [B, T] ops instead of autograd's ~40.
    """

    @staticmethod
    def forward(ctx, alpha, padding_mask, threshold, tail_threshold, bound):
        x = alpha.detach().to(torch.float64)
        cap = min(1.0, threshold)
        keep = torch.ones_like(x, dtype=torch.bool) if padding_mask is None else ~padding_mask
        a = torch.where(keep, x.clamp(0.0, cap), 0.0)
        S = a.cumsum(1)
        P = _shift_right(S)
        # floor(S / beta); with beta = 1 the division is skipped so it is exact.
        n = (S if threshold == 1.0 else S / threshold).floor().long()
        k = _shift_right(n)
        fire = n > k
        if S.size(1) > 0:
            fires, total = n[:, -1:], S[:, -1:]
        else:  # no frames: no tokens
            fires, total = n.new_zeros(n.size(0), 1), S.new_zeros(S.size(0), 1)
        residual = total - fires.double() * threshold
        # tail: one more token from the leftover weight, renormalised to a full token
        tail = residual >= (float("inf") if tail_threshold is None else tail_threshold)
        residual = torch.where(tail, residual, 1.0)
        scale = torch.where(tail, threshold / residual, 0.0)  # factor of token `fires`

        def factor(tok):
            f = torch.where(tok < fires, 1.0, torch.where(tok == fires, scale, 0.0))
            return torch.where(tok < bound, f, 0.0)

        f_k, f_n = factor(k), factor(n)
        base_l = torch.where(fire, (k + 1).double() * threshold - P, a)
        base_r = torch.where(fire, S - n.double() * threshold, 0.0)
        ctx.save_for_backward(x, keep, fire, f_k, f_n, base_l, base_r, k, n, fires, tail,
                              residual)
        ctx.args = (threshold, cap, bound)
        ctx.alpha_dtype = alpha.dtype
        top = max(bound - 1, 0)
        token_index = k if padding_mask is None else k.masked_fill(padding_mask, -1)
        outputs = (base_l * f_k, base_r * f_n, k.clamp(max=top), n.clamp(max=top), fire,
                   token_index, (fires + tail.long()).squeeze(1))
        ctx.mark_non_differentiable(*outputs[2:])
        return outputs

    @staticmethod
    def backward(ctx, grad_wl, grad_wr, *unused):
        x, keep, fire, f_k, f_n, base_l, base_r, k, n, fires, tail, residual = ctx.saved_tensors
        threshold, cap, bound = ctx.args
        gl = torch.zeros_like(x) if grad_wl is None else grad_wl.to(torch.float64)
        gr = torch.zeros_like(x) if grad_wr is None else grad_wr.to(torch.float64)
        z = torch.where(fire, gr * f_n - gl * f_k, 0.0)
        on_tail_l = keep & (k == fires) & (k < bound)
        on_tail_r = keep & (n == fires) & (n < bound)
        d_scale = (torch.where(on_tail_l, gl * base_l, 0.0)
                   + torch.where(on_tail_r, gr * base_r, 0.0)).sum(1, keepdim=True)
        d_r = torch.where(tail, -d_scale * threshold / residual.square(), 0.0)
        grad = z.flip(1).cumsum(1).flip(1) + gl * f_k + d_r
        grad = torch.where(keep & (x >= 0.0) & (x <= cap), grad, 0.0)
        return grad.to(ctx.alpha_dtype), None, None, None, None


def plan_tensors(alpha, padding_mask, threshold, tail_threshold, bound, impl, fp64_weights):
    """(wl, wr, il, ir, fire_mask, token_index, lengths) from the torch or the Triton plan."""
    if impl == "triton":
        from fairseq_hkd.ops.cif.op import cif_plan_triton

        return cif_plan_triton(alpha, padding_mask, float(threshold), tail_threshold, bound,
                               fp64_weights)[:7]
    return _TorchPlan.apply(alpha, padding_mask, float(threshold), tail_threshold, bound)


def cif_plan(
    alpha: Tensor,
    padding_mask: Optional[Tensor],
    threshold: float,
    tail_threshold: Optional[float],
    max_tokens: Optional[int],
    allow_overflow: bool,
    impl: str = "torch",
    fp64_weights: bool = True,
) -> CifPlan:
    """Compute the CIF plan for alpha [B, T] (see the module docstring); impl "torch" or
    "triton" (the fused kernel, ``triton_plan.py``). Weights are float64 for "torch"."""
    # without max_tokens, T + 1 bounds the count (one fire per frame, plus the tail)
    bound = max_tokens if max_tokens is not None else alpha.size(1) + 1
    wl, wr, il, ir, fire, tok, lengths = plan_tensors(
        alpha, padding_mask, threshold, tail_threshold, bound, impl, fp64_weights)
    num = resolve_num_tokens(lengths, max_tokens, allow_overflow)
    if num != bound:  # only without max_tokens: clamp the (zero-weight) spill-over entries
        il, ir = il.clamp(max=max(num - 1, 0)), ir.clamp(max=max(num - 1, 0))
    return CifPlan(wl, wr, il, ir, lengths, fire, tok, num)
