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
    """What ``plan_backward`` needs from ``plan_forward``. The last axis of the [B, T, 2]
    tensors is (left, right): the two tokens a frame feeds.

    grad_mask [B, T] bool: where the clamp (and the padding mask) pass the gradient.
    fire [B, T] bool; factor [B, T, 2] float64: the token factor (1, the tail factor, or 0);
    base [B, T, 2] float64: the weights before the factor. Tail only (None without a tail
    threshold): on_tail [B, T, 2] bool (the entry feeds the tail token); d_r_scale [B, 1]
    float64 (d factor / d residual for the tail token, 0 where no tail token is emitted).
    """

    grad_mask: Tensor
    fire: Tensor
    factor: Tensor
    base: Tensor
    on_tail: Optional[Tensor]
    d_r_scale: Optional[Tensor]


def plan_forward(alpha: Tensor, padding_mask: Optional[Tensor], threshold: float,
                 tail_threshold: Optional[float], bound: int):
    """alpha [B, T] -> (weights [B, T, 2] float64, token ids [B, T, 2] long (unclamped),
    fire [B, T] bool, lengths [B] long, PlanState); last axis (left, right). Tokens >= bound
    get weight 0.

    About 25 small ops: on CPU their dispatch, not their arithmetic, is the cost, so left and
    right share stacked tensors, the token factor is one ``where`` against per-row limits, and
    the right base weight is a - left base (exactly 0 on frames that do not fire).
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
    ids = torch.stack((k, n), dim=-1)
    fire = n > k
    if S.size(1) > 0:
        fires, total = n[:, -1:], S[:, -1:]
    else:  # no frames: no tokens
        fires, total = n.new_zeros(n.size(0), 1), S.new_zeros(S.size(0), 1)
    # every token id is <= fires; ids below min(fires, bound) get factor 1, token `fires`
    # (the leftover) gets the tail factor beta / r if a tail is emitted and it is < bound
    below = ids < fires.clamp(max=bound).unsqueeze(-1)
    on_tail = d_r_scale = None
    if tail_threshold is None:
        tail = torch.zeros_like(fire[:, :1])
        factor = below.double()
    else:
        residual = total - fires * threshold
        tail = residual >= tail_threshold
        r = torch.where(tail, residual, 1.0)
        emitted = tail & (fires < bound)
        factor = torch.where(below, 1.0, torch.where(emitted, threshold / r, 0.0).unsqueeze(-1))
        on_tail = ids == fires.unsqueeze(-1)
        d_r_scale = torch.where(emitted, -threshold / r.square(), 0.0)
    base_l = torch.where(fire, (k + 1.0) * threshold - P, a)
    base = torch.stack((base_l, a - base_l), dim=-1)
    state = PlanState(grad_mask, fire, factor, base, on_tail, d_r_scale)
    lengths = (fires.long() + tail.long()).squeeze(1)
    return base * factor, ids.long(), fire, lengths, state


def plan_backward(state: PlanState, grad_w: Tensor) -> Tensor:
    """dL/dweights [B, T, 2] (left, right) -> dL/dalpha [B, T] float64.

    GL, GR = the two gradients, f the token factor (derivation in triton_plan.py):
    dL/da_u = GL_u f_{k_u} + sum_{t >= u, fire_t} (GR_t f_{n_t} - GL_t f_{k_t}) + dL/dr,
    times the clamp/mask gradient.
    """
    grad_w = grad_w.to(torch.float64)
    scaled = grad_w * state.factor
    left = scaled[..., 0]
    z = torch.where(state.fire, scaled[..., 1] - left, 0.0)
    grad = z.flip(1).cumsum(1).flip(1) + left
    if state.d_r_scale is not None:  # the tail factor beta / r depends on every alpha via r
        d_scale = torch.where(state.on_tail, grad_w * state.base, 0.0).sum((1, 2))
        grad = grad + d_scale.unsqueeze(1) * state.d_r_scale
    return torch.where(state.grad_mask, grad, 0.0)


class _TorchPlan(torch.autograd.Function):
    """``plan_forward`` / ``plan_backward`` as an autograd function of alpha (the weights
    are differentiable, the indices are not)."""

    @staticmethod
    def forward(ctx, alpha, padding_mask, threshold, tail_threshold, bound):
        w, ids, fire, lengths, state = plan_forward(alpha, padding_mask, threshold,
                                                    tail_threshold, bound)
        ctx.state_fields = [f is not None for f in state]
        ctx.save_for_backward(*[f for f in state if f is not None])
        ctx.alpha_dtype = alpha.dtype
        k = ids[..., 0]
        token_index = k.clone() if padding_mask is None else k.masked_fill(padding_mask, -1)
        il, ir = ids.clamp(max=max(bound - 1, 0)).unbind(-1)
        outputs = (w[..., 0].contiguous(), w[..., 1].contiguous(), il.contiguous(),
                   ir.contiguous(), fire, token_index, lengths)
        ctx.mark_non_differentiable(*outputs[2:])
        return outputs

    @staticmethod
    def backward(ctx, grad_wl, grad_wr, *unused):
        state = unpack_state(ctx.saved_tensors, ctx.state_fields)
        grads = [torch.zeros_like(state.base[..., 0]) if g is None else g
                 for g in (grad_wl, grad_wr)]
        grad = plan_backward(state, torch.stack(grads, dim=-1))
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
