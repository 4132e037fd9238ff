"""``fairseq_hkd::cif_gather``: the [B, T, C] part of CIF as a torch.library custom op.

One op, two implementations chosen by the ``impl`` argument: "torch" (``torch_impl``, any
device) and "triton" (``triton_kernels``: CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1). Its backward is a second custom op, so both directions are opaque to
torch.compile and checked by ``torch.library.opcheck``. Triton is imported only when used.
"""
from typing import Tuple

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
