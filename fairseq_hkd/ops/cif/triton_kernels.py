"""Triton kernels for the CIF gather, forward and backward (the CUDA path).

Shapes: B batch, T frames, N tokens, C channels; rows of h are r = b*T + t, rows of the
output are b*N + j. The op (see ``op.py``) is

    out[b, j] = sum_t (wl[b,t] [il[b,t] == j] + wr[b,t] [ir[b,t] == j]) h[b, t]

with il <= ir <= next frame's il along each row, so token j is fed by the contiguous frames
[start_j, end_j) (start_j = first t with ir_t >= j, end_j = one past the last t with
il_t <= j; both from ``torch.searchsorted`` on the device, no host sync).

Forward: one program per (token, channel block) loops over its frames, skipping zero weights
(so ``cif`` needn't zero padded h first: NaN/inf there never reach the outputs; the torch
implementation multiplies, and ``cif`` zeroes padded h for it); each h row is read
once (twice for a firing frame, which feeds two tokens; the second read hits L2) and each
output row written once. Backward: one program per block of frames loops over channel blocks:

    grad_h[r] = wl[r] g[il] + wr[r] g[ir]
    grad_wl[r] = g[il] . h[r],   grad_wr[r] = g[ir] . h[r]

For a non-firing frame il == ir, so g[ir] is not loaded again: grad_h = (wl + wr) g[il] and
grad_wr = grad_wl. Loads are upcast to float32 (float64 stays float64); offsets are int64.
Under TRITON_INTERPRET=1 (set before this module is imported) the kernels run on CPU tensors.
"""
import os
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _check_device(h: Tensor) -> None:
    if not (h.is_cuda or INTERPRET):
        raise ValueError(
            "cif: the triton implementation needs CUDA tensors (or TRITON_INTERPRET=1 set "
            "before import, for tests); use impl='torch' / FAIRSEQ_HKD_CIF_IMPL=torch on CPU"
        )


@triton.jit
def cif_gather_fwd_kernel(
    h_ptr, wl_ptr, wr_ptr, il_ptr, ir_ptr, start_ptr, end_ptr, out_ptr,
    T, N, C,
    BLOCK_C: tl.constexpr, ACC_FP64: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)  # b * N + j
    b = token // N
    j = token - b * N
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros([BLOCK_C], dtype=acc_dtype)
    first = tl.load(start_ptr + token)
    last = tl.load(end_ptr + token)
    for t in range(first, last):
        r = b * T + t
        w = tl.where(tl.load(il_ptr + r) == j, tl.load(wl_ptr + r), 0.0)
        w += tl.where(tl.load(ir_ptr + r) == j, tl.load(wr_ptr + r), 0.0)
        x = tl.load(h_ptr + r * C + cols, mask=cmask, other=0.0)
        # select, not multiply: a zero-weight (e.g. padded) frame can't inject NaN/inf
        acc += tl.where(w != 0.0, w.to(acc_dtype) * x.to(acc_dtype), 0.0)
    tl.store(out_ptr + token * C + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def cif_gather_bwd_kernel(
    g_ptr, h_ptr, wl_ptr, wr_ptr, il_ptr, ir_ptr, gh_ptr, gwl_ptr, gwr_ptr,
    BT, T, N, C,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, ACC_FP64: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < BT
    b = rows // T
    left = b * N + tl.load(il_ptr + rows, mask=rmask, other=0)
    right = b * N + tl.load(ir_ptr + rows, mask=rmask, other=0)
    fire = left != right
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    wl = tl.load(wl_ptr + rows, mask=rmask, other=0.0).to(acc_dtype)
    wr = tl.load(wr_ptr + rows, mask=rmask, other=0.0).to(acc_dtype)
    wl_eff = tl.where(fire, wl, wl + wr)  # il == ir: both weights hit the same g row
    dot_l = tl.zeros([BLOCK_T], dtype=acc_dtype)
    dot_r = tl.zeros([BLOCK_T], dtype=acc_dtype)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        m2 = rmask[:, None] & (cols < C)[None, :]
        x = tl.load(h_ptr + rows[:, None] * C + cols[None, :], mask=m2, other=0.0).to(acc_dtype)
        gl = tl.load(g_ptr + left[:, None] * C + cols[None, :], mask=m2, other=0.0).to(acc_dtype)
        gr = tl.load(g_ptr + right[:, None] * C + cols[None, :], mask=m2 & fire[:, None],
                     other=0.0).to(acc_dtype)
        gh = wl_eff[:, None] * gl + wr[:, None] * gr
        tl.store(gh_ptr + rows[:, None] * C + cols[None, :], gh.to(gh_ptr.dtype.element_ty),
                 mask=m2)
        dot_l += tl.sum(gl * x, axis=1)
        dot_r += tl.sum(gr * x, axis=1)
    tl.store(gwl_ptr + rows, dot_l.to(gwl_ptr.dtype.element_ty), mask=rmask)
    tl.store(gwr_ptr + rows, tl.where(fire, dot_r, dot_l).to(gwr_ptr.dtype.element_ty), mask=rmask)


def _block_c(C: int) -> int:
    return min(triton.next_power_of_2(max(C, 16)), 1024)


def token_ranges(il: Tensor, ir: Tensor, num_tokens: int) -> Tuple[Tensor, Tensor]:
    """[B, T] token ids -> start, end [B, N] int64: token j is fed by frames [start, end)."""
    j = torch.arange(num_tokens, device=il.device).expand(il.size(0), num_tokens).contiguous()
    start = torch.searchsorted(ir.contiguous(), j, side="left")
    end = torch.searchsorted(il.contiguous(), j, side="right")
    return start, end


def gather_forward(
    h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor, num_tokens: int
) -> Tensor:
    """h [B, T, C], wl/wr [B, T], il/ir [B, T] long in [0, N) -> out [B, N, C] (h.dtype)."""
    _check_device(h)
    B, T, C = h.shape
    out = h.new_empty(B, num_tokens, C)
    if out.numel() == 0:
        return out.zero_()
    start, end = token_ranges(il, ir, num_tokens)
    block_c = _block_c(C)
    grid = (B * num_tokens, triton.cdiv(C, block_c))
    cif_gather_fwd_kernel[grid](
        h, wl.contiguous(), wr.contiguous(), il.contiguous(), ir.contiguous(), start, end, out,
        T, num_tokens, C,
        BLOCK_C=block_c, ACC_FP64=h.dtype == torch.float64, num_warps=4 if block_c >= 256 else 2,
    )
    return out


BWD_BLOCK_T = 16


def gather_backward(
    grad_out: Tensor, h: Tensor, wl: Tensor, wr: Tensor, il: Tensor, ir: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """grad_out [B, N, C] -> (grad_h [B, T, C], grad_wl [B, T], grad_wr [B, T])."""
    _check_device(h)
    B, T, C = h.shape
    N = grad_out.size(1)
    grad_h = torch.empty_like(h)
    grad_wl, grad_wr = torch.empty_like(wl), torch.empty_like(wr)
    if h.numel() == 0:
        return grad_h, grad_wl.zero_(), grad_wr.zero_()
    block_c = min(_block_c(C), 128)
    grid = (triton.cdiv(B * T, BWD_BLOCK_T),)
    cif_gather_bwd_kernel[grid](
        grad_out, h, wl.contiguous(), wr.contiguous(), il.contiguous(), ir.contiguous(),
        grad_h, grad_wl, grad_wr,
        B * T, T, N, C,
        BLOCK_T=BWD_BLOCK_T, BLOCK_C=block_c, ACC_FP64=h.dtype == torch.float64, num_warps=4,
    )
    return grad_h, grad_wl, grad_wr


AOT_DTYPES = ("fp32", "bf16", "fp16", "fp64")  # h / embeddings


def kernel_signatures(dtype: str = "fp32"):
    """(kernel, signature, constexprs) for ahead-of-time compilation of both kernels.

    dtype is the triton type of h / out / grads ("fp32", "bf16", "fp16", "fp64"); the weights
    are fp32 (fp64 for fp64 inputs, accumulated in fp64), as ``cif`` passes them.
    """
    i64, w = "*i64", ("*fp64" if dtype == "fp64" else "*fp32")
    fwd = {
        "h_ptr": f"*{dtype}", "wl_ptr": w, "wr_ptr": w, "il_ptr": i64, "ir_ptr": i64,
        "start_ptr": i64, "end_ptr": i64, "out_ptr": f"*{dtype}",
        "T": "i32", "N": "i32", "C": "i32", "BLOCK_C": "constexpr", "ACC_FP64": "constexpr",
    }
    bwd = {
        "g_ptr": f"*{dtype}", "h_ptr": f"*{dtype}", "wl_ptr": w, "wr_ptr": w, "il_ptr": i64,
        "ir_ptr": i64, "gh_ptr": f"*{dtype}", "gwl_ptr": w, "gwr_ptr": w,
        "BT": "i32", "T": "i32", "N": "i32", "C": "i32",
        "BLOCK_T": "constexpr", "BLOCK_C": "constexpr", "ACC_FP64": "constexpr",
    }
    fp64 = dtype == "fp64"
    return [
        (cif_gather_fwd_kernel, fwd, {"BLOCK_C": 512, "ACC_FP64": fp64}),
        (cif_gather_bwd_kernel, bwd, {"BLOCK_T": BWD_BLOCK_T, "BLOCK_C": 128, "ACC_FP64": fp64}),
    ]
