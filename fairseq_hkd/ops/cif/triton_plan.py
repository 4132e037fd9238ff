"""Triton kernels for the CIF plan (``plan.py``'s [B, T] maths fused into one kernel per pass).

On a GPU the plan is ~40 tiny elementwise/scan ops in PyTorch (and as many again in its
autograd backward): launch overhead that dwarfs the gather kernel. Here one program per
utterance does the whole plan in float64, in chunks of BLOCK_T frames with a carried prefix:

forward  pass 1: a = clamp(alpha), S = carry + cumsum(a), stored to S_buf; carry = max(S)
                 (S is non-decreasing, so this is its last element, bit-identical to S_buf).
         totals: fires = floor(S_T / beta), residual r, tail, scale = beta / r, lengths.
         pass 2: P_t = S_buf[t-1] (reloaded, so k_t = n_{t-1} exactly), n, k, fire, the
                 weights wl/wr scaled by the token factor f (1 below fires, scale for the
                 tail token, 0 otherwise and beyond N), clamped indices, token_index.
backward (grad_wl = GL, grad_wr = GR given, see plan.py for the weights):
         d wl_t = f_k * (fire ? -dP_t : dS_t - dP_t),  d wr_t = f_n * (fire ? dS_t : 0), so
         dL/da_u = GL_u f_{k_u} + sum_{t >= u, fire_t} (GR_t f_{n_t} - GL_t f_{k_t}) + dL/dr
         with dL/dr = -(beta / r^2) * sum over tail-token entries of G * (unscaled weight).
         pass A stores Z_t = fire_t (GR f_n - GL f_k) and accumulates dL/dscale;
         pass B runs the reverse cumsum of Z from the last chunk, adds GL f_k + dL/dr and the
         clamp/mask gradient (1 where 0 <= alpha <= cap and not padded, as torch.clamp).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from fairseq_hkd.ops.cif.triton_kernels import _check_device

PLAN_BLOCK_T = 1024


@triton.jit
def _clamped(alpha_ptr, mask_ptr, offs, valid, cap, HAS_MASK: tl.constexpr):
    a = tl.load(alpha_ptr + offs, mask=valid, other=0.0).to(tl.float64)
    a = tl.minimum(tl.maximum(a, 0.0), cap)
    keep = valid
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + offs, mask=valid, other=1) == 0)
    return tl.where(keep, a, 0.0), keep


@triton.jit
def _floor_div(x, beta, BETA_ONE: tl.constexpr):
    if BETA_ONE:
        q = tl.floor(x)
    else:
        q = tl.floor(x / beta)
    return q.to(tl.int64)


@triton.jit
def _scalars(params_ptr):
    """beta, cap = min(1, beta), tail threshold (+inf: no tail), as float64."""
    return tl.load(params_ptr), tl.load(params_ptr + 1), tl.load(params_ptr + 2)


@triton.jit
def _totals(s_ptr, row, T, beta, tail_threshold, BETA_ONE: tl.constexpr):
    total = tl.load(s_ptr + row * T + T - 1)
    fires = _floor_div(total, beta, BETA_ONE)
    residual = total - fires.to(tl.float64) * beta
    tail = residual >= tail_threshold
    scale = tl.where(tail, beta / tl.where(tail, residual, 1.0), 0.0)  # factor of token `fires`
    return fires, residual, tail, scale


@triton.jit
def _frame_plan(s_ptr, alpha_ptr, mask_ptr, row, t, T, beta, cap,
                fires, scale, N, BETA_ONE: tl.constexpr, HAS_MASK: tl.constexpr):
    """Per frame: a, S, P, k, n, fire, the token factors f_k, f_n, and the keep mask."""
    valid = t < T
    a, keep = _clamped(alpha_ptr, mask_ptr, row * T + t, valid, cap, HAS_MASK)
    S = tl.load(s_ptr + row * T + t, mask=valid, other=0.0)
    P = tl.load(s_ptr + row * T + t - 1, mask=valid & (t > 0), other=0.0)
    n = _floor_div(S, beta, BETA_ONE)
    k = _floor_div(P, beta, BETA_ONE)
    fire = n > k
    f_k = tl.where(k < fires, 1.0, tl.where(k == fires, scale, 0.0))
    f_k = tl.where(k < N, f_k, 0.0)
    f_n = tl.where(n < fires, 1.0, tl.where(n == fires, scale, 0.0))
    f_n = tl.where(n < N, f_n, 0.0)
    return a, S, P, k, n, fire, f_k, f_n, keep


@triton.jit
def cif_plan_fwd_kernel(
    alpha_ptr, mask_ptr, s_ptr, wl_ptr, wr_ptr, il_ptr, ir_ptr, fire_ptr, tok_ptr, len_ptr,
    params_ptr, T, N,
    BLOCK_T: tl.constexpr, HAS_MASK: tl.constexpr, BETA_ONE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    beta, cap, tail_threshold = _scalars(params_ptr)
    carry = tl.full([], 0.0, tl.float64)
    for c0 in range(0, T, BLOCK_T):  # pass 1: running sums
        t = c0 + tl.arange(0, BLOCK_T)
        a, keep = _clamped(alpha_ptr, mask_ptr, row * T + t, t < T, cap, HAS_MASK)
        S = carry + tl.cumsum(a, axis=0)
        tl.store(s_ptr + row * T + t, S, mask=t < T)
        carry = tl.max(S, axis=0)
    tl.debug_barrier()
    fires, residual, tail, scale = _totals(s_ptr, row, T, beta, tail_threshold, BETA_ONE)
    tl.store(len_ptr + row, fires + tail.to(tl.int64))
    top = tl.maximum(N - 1, 0)
    for c0 in range(0, T, BLOCK_T):  # pass 2: weights and indices
        t = c0 + tl.arange(0, BLOCK_T)
        valid = t < T
        a, S, P, k, n, fire, f_k, f_n, keep = _frame_plan(
            s_ptr, alpha_ptr, mask_ptr, row, t, T, beta, cap, fires, scale, N,
            BETA_ONE, HAS_MASK)
        wl = tl.where(fire, (k + 1).to(tl.float64) * beta - P, a) * f_k
        wr = tl.where(fire, S - n.to(tl.float64) * beta, 0.0) * f_n
        o = row * T + t
        tl.store(wl_ptr + o, wl.to(wl_ptr.dtype.element_ty), mask=valid)
        tl.store(wr_ptr + o, wr.to(wr_ptr.dtype.element_ty), mask=valid)
        tl.store(il_ptr + o, tl.minimum(k, top), mask=valid)
        tl.store(ir_ptr + o, tl.minimum(n, top), mask=valid)
        tl.store(fire_ptr + o, fire, mask=valid)
        tl.store(tok_ptr + o, tl.where(keep, k, -1), mask=valid)


@triton.jit
def cif_plan_bwd_kernel(
    alpha_ptr, mask_ptr, s_ptr, gl_ptr, gr_ptr, z_ptr, grad_ptr,
    params_ptr, T, N,
    BLOCK_T: tl.constexpr, HAS_MASK: tl.constexpr, BETA_ONE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    beta, cap, tail_threshold = _scalars(params_ptr)
    fires, residual, tail, scale = _totals(s_ptr, row, T, beta, tail_threshold, BETA_ONE)
    d_scale = tl.full([], 0.0, tl.float64)
    for c0 in range(0, T, BLOCK_T):  # pass A: Z and dL/dscale
        t = c0 + tl.arange(0, BLOCK_T)
        valid = t < T
        a, S, P, k, n, fire, f_k, f_n, keep = _frame_plan(
            s_ptr, alpha_ptr, mask_ptr, row, t, T, beta, cap, fires, scale, N,
            BETA_ONE, HAS_MASK)
        g_l = tl.load(gl_ptr + row * T + t, mask=valid, other=0.0).to(tl.float64)
        g_r = tl.load(gr_ptr + row * T + t, mask=valid, other=0.0).to(tl.float64)
        tl.store(z_ptr + row * T + t, tl.where(fire, g_r * f_n - g_l * f_k, 0.0), mask=valid)
        base_l = tl.where(fire, (k + 1).to(tl.float64) * beta - P, a)
        base_r = tl.where(fire, S - n.to(tl.float64) * beta, 0.0)
        # entries of the tail token (d_r below is 0 without a tail); padded frames excluded:
        # their grads are g . h with h unzeroed (maybe NaN) and their weights are 0
        on_tail_l = keep & (k == fires) & (k < N)
        on_tail_r = keep & (n == fires) & (n < N)
        d_scale += tl.sum(tl.where(on_tail_l, g_l * base_l, 0.0) +
                          tl.where(on_tail_r, g_r * base_r, 0.0), axis=0)
    d_r = tl.where(tail, -d_scale * beta / (residual * residual), 0.0)
    tl.debug_barrier()
    suffix = tl.full([], 0.0, tl.float64)
    num_chunks = tl.cdiv(T, BLOCK_T)
    for i in range(0, num_chunks):  # pass B: reverse cumsum, last chunk first
        t = (num_chunks - 1 - i) * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = t < T
        a, S, P, k, n, fire, f_k, f_n, keep = _frame_plan(
            s_ptr, alpha_ptr, mask_ptr, row, t, T, beta, cap, fires, scale, N,
            BETA_ONE, HAS_MASK)
        z = tl.load(z_ptr + row * T + t, mask=valid, other=0.0)
        g_l = tl.load(gl_ptr + row * T + t, mask=valid, other=0.0).to(tl.float64)
        grad = suffix + tl.cumsum(z, axis=0, reverse=True) + g_l * f_k + d_r
        suffix += tl.sum(z, axis=0)
        x = tl.load(alpha_ptr + row * T + t, mask=valid, other=0.0).to(tl.float64)
        grad = tl.where(keep & (x >= 0.0) & (x <= cap), grad, 0.0)
        tl.store(grad_ptr + row * T + t, grad.to(grad_ptr.dtype.element_ty), mask=valid)


def _launch_args(alpha: Tensor, padding_mask: Optional[Tensor], threshold: float,
                 tail_threshold: Optional[float]):
    mask = padding_mask if padding_mask is not None else alpha  # dummy pointer when absent
    consts = dict(BLOCK_T=min(PLAN_BLOCK_T, triton.next_power_of_2(max(alpha.size(1), 16))),
                  HAS_MASK=padding_mask is not None, BETA_ONE=threshold == 1.0)
    return mask.contiguous(), _params(alpha.device, threshold, tail_threshold), consts


_PARAMS = {}


def _params(device, threshold: float, tail_threshold: Optional[float]) -> Tensor:
    """float64 [beta, cap, tail] on the device (triton passes python floats as float32);
    cached so a training step does not copy them to the device every call."""
    key = (device, float(threshold), tail_threshold)
    if key not in _PARAMS:
        tail = float("inf") if tail_threshold is None else float(tail_threshold)
        values = [threshold, min(1.0, threshold), tail]
        _PARAMS[key] = torch.tensor(values, dtype=torch.float64, device=device)
    return _PARAMS[key]


def plan_forward(alpha: Tensor, padding_mask: Optional[Tensor], threshold: float,
                 tail_threshold: Optional[float], num_tokens: int, fp64_weights: bool
                 ) -> Tuple[Tensor, ...]:
    """alpha [B, T] -> (wl, wr, il, ir, fire_mask, token_index, lengths, S) (see plan.py)."""
    _check_device(alpha)
    B, T = alpha.shape
    alpha = alpha.contiguous()
    wdtype = torch.float64 if fp64_weights else torch.float32
    S = alpha.new_empty(B, T, dtype=torch.float64)
    wl, wr = alpha.new_empty(B, T, dtype=wdtype), alpha.new_empty(B, T, dtype=wdtype)
    il, ir, tok = (alpha.new_empty(B, T, dtype=torch.long) for _ in range(3))
    fire = alpha.new_empty(B, T, dtype=torch.bool)
    lengths = alpha.new_zeros(B, dtype=torch.long)
    if B * T > 0:
        mask, params, consts = _launch_args(alpha, padding_mask, threshold, tail_threshold)
        cif_plan_fwd_kernel[(B,)](alpha, mask, S, wl, wr, il, ir, fire, tok, lengths,
                                  params, T, num_tokens, **consts)
    return wl, wr, il, ir, fire, tok, lengths, S


def plan_backward(grad_wl: Tensor, grad_wr: Tensor, alpha: Tensor,
                  padding_mask: Optional[Tensor], S: Tensor, threshold: float,
                  tail_threshold: Optional[float], num_tokens: int) -> Tensor:
    """(grad_wl, grad_wr) [B, T] -> grad_alpha [B, T] (alpha.dtype)."""
    B, T = alpha.shape
    grad = torch.empty_like(alpha)
    if B * T > 0:
        z = torch.empty_like(S)
        mask, params, consts = _launch_args(alpha, padding_mask, threshold, tail_threshold)
        cif_plan_bwd_kernel[(B,)](alpha.contiguous(), mask, S, grad_wl.contiguous(),
                                  grad_wr.contiguous(), z, grad, params, T, num_tokens,
                                  **consts)
    return grad


AOT_DTYPES = ("fp32", "fp64")  # alpha (the weight predictor's sigmoid runs in fp32)


def kernel_signatures(dtype: str = "fp32"):
    """(kernel, signature, constexprs) for ahead-of-time compilation of both plan kernels;
    dtype is the triton type of alpha (the weights are fp32, or fp64 for fp64)."""
    w = "*fp64" if dtype == "fp64" else "*fp32"
    common = {"alpha_ptr": f"*{dtype}", "mask_ptr": "*i1", "s_ptr": "*fp64"}
    fwd = dict(common, wl_ptr=w, wr_ptr=w, il_ptr="*i64", ir_ptr="*i64", fire_ptr="*i1",
               tok_ptr="*i64", len_ptr="*i64")
    bwd = dict(common, gl_ptr=w, gr_ptr=w, z_ptr="*fp64", grad_ptr=f"*{dtype}")
    tail = {"params_ptr": "*fp64", "T": "i32", "N": "i32", "BLOCK_T": "constexpr",
            "HAS_MASK": "constexpr", "BETA_ONE": "constexpr"}
    consts = {"BLOCK_T": PLAN_BLOCK_T, "HAS_MASK": True, "BETA_ONE": dtype != "fp64"}
    return [(cif_plan_fwd_kernel, dict(fwd, **tail), consts),
            (cif_plan_bwd_kernel, dict(bwd, **tail), consts)]
