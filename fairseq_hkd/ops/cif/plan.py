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


class PlanState(NamedTuple):
    """What ``plan_backward`` needs from ``plan_forward`` ([B, T] float64 unless noted).

    grad_mask [B, T] bool: where the clamp (and the padding mask) pass the gradient.
    fire [B, T] bool; f_k, f_n: token factors of the left/right token; base_l, base_r: the
    weights before the factor. Tail only (None without a tail threshold): on_tail_l,
    on_tail_r [B, T] bool (the entry feeds the tail token), d_r_scale [B, 1] float64
    (d residual-factor, zero where no tail token is emitted).
    """

    grad_mask: Tensor
    fire: Tensor
    f_k: Tensor
    f_n: Tensor
    base_l: Tensor
    base_r: Tensor
    on_tail_l: Optional[Tensor]
    on_tail_r: Optional[Tensor]
    d_r_scale: Optional[Tensor]


def plan_forward(alpha: Tensor, padding_mask: Optional[Tensor], threshold: float,
                 tail_threshold: Optional[float], bound: int):
    """alpha [B, T] -> (w_left, w_right [B, T] float64, k, n [B, T] long (unclamped token
    ids), fire [B, T] bool, lengths [B] long, PlanState). Tokens >= bound get weight 0.

    About 30 small [B, T] ops: on CPU their dispatch, not their arithmetic, is the cost, so
    the count is kept low (the token factor is one ``where`` against per-row limits, the
    right base weight is a - left base, which is exactly 0 on frames that do not fire).
    """
    x = alpha.detach().to(torch.float64)
    cap = min(1.0, threshold)
    a = x.clamp(0.0, cap)
    grad_mask = (x >= 0.0) & (x <= cap)
    if padding_mask is not None:
        a = a.masked_fill(padding_mask, 0.0)
        grad_mask &= ~padding_mask
    S = a.cumsum(1)
    P = _shift_right(S)
    # token ids as floats: floor(S / beta); with beta = 1 the division is skipped (exact)
    n = (S if threshold == 1.0 else S / threshold).floor()
    k = _shift_right(n)
    fire = n > k
    if S.size(1) > 0:
        fires, total = n[:, -1:], S[:, -1:]
    else:  # no frames: no tokens
        fires, total = n.new_zeros(n.size(0), 1), S.new_zeros(S.size(0), 1)
    # every token id is <= fires; tokens below min(fires, bound) get factor 1, token `fires`
    # (the leftover) gets the tail factor beta / r if a tail is emitted and it is < bound
    limit = fires.clamp(max=bound)
    on_tail_l = on_tail_r = d_r_scale = None
    if tail_threshold is None:
        tail = torch.zeros_like(fire[:, :1])
        f_k, f_n = (k < limit).double(), (n < limit).double()
    else:
        residual = total - fires * threshold
        tail = residual >= tail_threshold
        r = torch.where(tail, residual, 1.0)
        emitted = tail & (fires < bound)
        scale = torch.where(emitted, threshold / r, 0.0)
        f_k, f_n = torch.where(k < limit, 1.0, scale), torch.where(n < limit, 1.0, scale)
        on_tail_l, on_tail_r = k == fires, n == fires
        d_r_scale = torch.where(emitted, -threshold / r.square(), 0.0)
    base_l = torch.where(fire, (k + 1.0) * threshold - P, a)
    base_r = a - base_l
    state = PlanState(grad_mask, fire, f_k, f_n, base_l, base_r, on_tail_l, on_tail_r,
                      d_r_scale)
    lengths = (fires.long() + tail.long()).squeeze(1)
    return base_l * f_k, base_r * f_n, k.long(), n.long(), fire, lengths, state


def plan_backward(state: PlanState, grad_wl: Optional[Tensor],
                  grad_wr: Optional[Tensor]) -> Tensor:
    """(dL/dw_left, dL/dw_right) [B, T] -> dL/dalpha [B, T] float64.

    GL, GR = the two gradients, f the token factor (derivation in triton_plan.py):
    dL/da_u = GL_u f_{k_u} + sum_{t >= u, fire_t} (GR_t f_{n_t} - GL_t f_{k_t}) + dL/dr,
    times the clamp/mask gradient.
    """
    zeros = torch.zeros_like(state.base_l)
    gl = zeros if grad_wl is None else grad_wl.to(torch.float64)
    gr = zeros if grad_wr is None else grad_wr.to(torch.float64)
    left = gl * state.f_k
    z = torch.where(state.fire, gr * state.f_n - left, 0.0)
    grad = z.flip(1).cumsum(1).flip(1) + left
    if state.d_r_scale is not None:  # the tail factor beta / r depends on every alpha via r
        d_scale = (torch.where(state.on_tail_l, gl * state.base_l, 0.0)
                   + torch.where(state.on_tail_r, gr * state.base_r, 0.0)).sum(1, keepdim=True)
        grad = grad + d_scale * state.d_r_scale
    return torch.where(state.grad_mask, grad, 0.0)


class _TorchPlan(torch.autograd.Function):
    """``plan_forward`` / ``plan_backward`` as an autograd function of alpha (the weights
    are differentiable, the indices are not)."""

    @staticmethod
    def forward(ctx, alpha, padding_mask, threshold, tail_threshold, bound):
        wl, wr, k, n, fire, lengths, state = plan_forward(alpha, padding_mask, threshold,
                                                          tail_threshold, bound)
        ctx.state_fields = [f is not None for f in state]
        ctx.save_for_backward(*[f for f in state if f is not None])
        ctx.alpha_dtype = alpha.dtype
        top = max(bound - 1, 0)
        token_index = k if padding_mask is None else k.masked_fill(padding_mask, -1)
        outputs = (wl, wr, k.clamp(max=top), n.clamp(max=top), fire, token_index, lengths)
        ctx.mark_non_differentiable(*outputs[2:])
        return outputs

    @staticmethod
    def backward(ctx, grad_wl, grad_wr, *unused):
        state = unpack_state(ctx.saved_tensors, ctx.state_fields)
        grad = plan_backward(state, grad_wl, grad_wr)
        return grad.to(ctx.alpha_dtype), None, None, None, None


def unpack_state(saved, present) -> PlanState:
    """Rebuild a PlanState from the saved non-None fields (``present``: flags per field)."""
    it = iter(saved)
    return PlanState(*[next(it) if p else None for p in present])


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
