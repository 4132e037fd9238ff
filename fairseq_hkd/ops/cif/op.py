"""CIF custom ops (torch.library): ``cif_gather`` (the [B, T, C] part) and ``cif_plan_triton``.

One op, two implementations chosen by the ``impl`` argument: "torch" (``torch_impl``, any
device) and "triton" (``triton_kernels``: CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1). Its backward is a second custom op, so both directions are opaque to
torch.compile and checked by ``torch.library.opcheck``. Triton is imported only when used.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from fairseq_hkd.ops.cif import torch_impl

IMPLS = ("torch", "triton")


def _module(impl: str):
    if impl == "torch":
        return torch_impl
    if impl == "triton":
        from fairseq_hkd.ops.cif import triton_kernels

        return triton_kernels
    raise ValueError(f"cif_gather: unknown impl {impl!r}; expected one of {IMPLS}")


@torch.library.custom_op("fairseq_hkd::cif_gather", mutates_args=())
def cif_gather(
    h: Tensor,
    w_left: Tensor,
    w_right: Tensor,
    idx_left: Tensor,
    idx_right: Tensor,
    num_tokens: int,
    impl: str,
) -> Tensor:
    """h [B, T, C], w_* [B, T] float, idx_* [B, T] long in [0, N) -> [B, N, C].

    out[b, j] = sum_t (w_left[b,t] [idx_left[b,t] == j] + w_right[b,t] [idx_right[b,t] == j]) h[b,t]
    idx_left <= idx_right <= next frame's idx_left (non-decreasing along each row).
    """
    return _module(impl).gather_forward(
        h.contiguous(), w_left, w_right, idx_left, idx_right, num_tokens
    )


@cif_gather.register_fake
def _cif_gather_fake(h, w_left, w_right, idx_left, idx_right, num_tokens, impl):
    return h.new_empty(h.size(0), num_tokens, h.size(2))


@torch.library.custom_op("fairseq_hkd::cif_gather_backward", mutates_args=())
def cif_gather_backward(
    grad_out: Tensor,
    h: Tensor,
    w_left: Tensor,
    w_right: Tensor,
    idx_left: Tensor,
    idx_right: Tensor,
    impl: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    """grad_out [B, N, C] -> (grad_h [B, T, C], grad_w_left [B, T], grad_w_right [B, T])."""
    return _module(impl).gather_backward(
        grad_out.contiguous(), h.contiguous(), w_left, w_right, idx_left, idx_right
    )


@cif_gather_backward.register_fake
def _cif_gather_backward_fake(grad_out, h, w_left, w_right, idx_left, idx_right, impl):
    return torch.empty_like(h), torch.empty_like(w_left), torch.empty_like(w_right)


def _setup_context(ctx, inputs, output):
    h, w_left, w_right, idx_left, idx_right, _num_tokens, impl = inputs
    ctx.save_for_backward(h, w_left, w_right, idx_left, idx_right)
    ctx.impl = impl


def _backward(ctx, grad_out):
    h, w_left, w_right, idx_left, idx_right = ctx.saved_tensors
    grad_h, grad_wl, grad_wr = cif_gather_backward(
        grad_out, h, w_left, w_right, idx_left, idx_right, ctx.impl
    )
    return grad_h, grad_wl, grad_wr, None, None, None, None


cif_gather.register_autograd(_backward, setup_context=_setup_context)


# The plan as one Triton kernel per direction (see triton_plan.py); the torch path uses plan.py.


@torch.library.custom_op("fairseq_hkd::cif_plan_triton", mutates_args=())
def cif_plan_triton(
    alpha: Tensor,
    padding_mask: Optional[Tensor],
    threshold: float,
    tail_threshold: Optional[float],
    num_tokens: int,
    fp64_weights: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """alpha [B, T] -> (w_left, w_right, idx_left, idx_right, fire_mask, token_index,
    lengths [B], running sums S [B, T] float64); differentiable in alpha through the weights."""
    from fairseq_hkd.ops.cif import triton_plan

    return triton_plan.plan_forward(alpha, padding_mask, threshold, tail_threshold,
                                    num_tokens, fp64_weights)


@cif_plan_triton.register_fake
def _cif_plan_triton_fake(alpha, padding_mask, threshold, tail_threshold, num_tokens,
                          fp64_weights):
    B, T = alpha.shape
    w = alpha.new_empty(B, T, dtype=torch.float64 if fp64_weights else torch.float32)
    i = alpha.new_empty(B, T, dtype=torch.long)
    return (w, torch.empty_like(w), i, torch.empty_like(i),
            alpha.new_empty(B, T, dtype=torch.bool), torch.empty_like(i),
            alpha.new_empty(B, dtype=torch.long), alpha.new_empty(B, T, dtype=torch.float64))


@torch.library.custom_op("fairseq_hkd::cif_plan_triton_backward", mutates_args=())
def cif_plan_triton_backward(
    grad_w_left: Tensor,
    grad_w_right: Tensor,
    alpha: Tensor,
    padding_mask: Optional[Tensor],
    running_sums: Tensor,
    threshold: float,
    tail_threshold: Optional[float],
    num_tokens: int,
) -> Tensor:
    """(grad_w_left, grad_w_right) [B, T] -> grad_alpha [B, T]."""
    from fairseq_hkd.ops.cif import triton_plan

    return triton_plan.plan_backward(grad_w_left, grad_w_right, alpha, padding_mask,
                                     running_sums, threshold, tail_threshold, num_tokens)


@cif_plan_triton_backward.register_fake
def _cif_plan_triton_backward_fake(grad_w_left, grad_w_right, alpha, *rest):
    return torch.empty_like(alpha)


def _plan_setup_context(ctx, inputs, output):
    alpha, padding_mask, threshold, tail_threshold, num_tokens, _ = inputs
    ctx.save_for_backward(alpha, padding_mask, output[-1])
    ctx.args = (threshold, tail_threshold, num_tokens)


def _plan_backward(ctx, grad_wl, grad_wr, *unused):
    alpha, padding_mask, running_sums = ctx.saved_tensors
    if grad_wl is None:
        grad_wl = torch.zeros_like(running_sums)
    if grad_wr is None:
        grad_wr = torch.zeros_like(running_sums)
    grad = cif_plan_triton_backward(grad_wl, grad_wr, alpha, padding_mask, running_sums,
                                    *ctx.args)
    return grad, None, None, None, None, None


cif_plan_triton.register_autograd(_plan_backward, setup_context=_plan_setup_context)
