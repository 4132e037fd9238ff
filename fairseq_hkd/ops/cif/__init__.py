"""Continuous integrate-and-fire (CIF): ``cif(alpha, h, ...) -> CifOutput``.

Shapes: B batch, T frames, C channels, N output tokens.

Implementations (all compute the same function; ``impl=`` or the environment variable
FAIRSEQ_HKD_CIF_IMPL picks one, default "auto"):
  "reference"  sequential float64 loop (``reference.py``): tests only, very slow;
  "torch"      vectorized PyTorch (``torch_impl.py``): the CPU path;
  "triton"     Triton kernels, forward and hand-written backward: the plan in one kernel
               (``triton_plan.py``), the [B, T, C] gather in another (``triton_kernels.py``);
  "auto"       "triton" for CUDA tensors when Triton is installed, else "torch".
Layout of the work: ``plan.py`` turns alpha into per-frame (token, weight) pairs in float64
([B, T] work, differentiable), the gather integrates h with them ([B, T, C] work). The Triton
path runs both as torch.library custom ops (``op.py``) with registered autograd; the torch path
runs them as one autograd node (``torch_impl.CifFunction``), which on CPU saves the custom-op
dispatch of a second node. The ``cif_gather`` custom op also takes impl="torch" (the same
gather; tested equal to the fused node).
"""
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fairseq_hkd.ops.cif.plan import cif_plan
from fairseq_hkd.ops.cif.reference import cif_reference

__all__ = ["cif", "CifOutput", "cif_reference"]

IMPL_ENV = "FAIRSEQ_HKD_CIF_IMPL"
_IMPLS = ("auto", "reference", "torch", "triton")


class CifOutput(NamedTuple):
    """embeddings [B, N, C] (h.dtype, zero beyond lengths[b]); lengths [B] long (fires + tail);
    fire_mask [B, T] bool (frame t completed a token); token_index [B, T] long (token that frame
    t's weight starts in; -1 on padding; lengths[b] for trailing frames whose leftover was not
    emitted)."""

    embeddings: Tensor
    lengths: Tensor
    fire_mask: Tensor
    token_index: Tensor


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_impl(impl: Optional[str], h: Tensor) -> str:
    impl = impl or os.environ.get(IMPL_ENV, "auto")
    if impl not in _IMPLS:
        raise ValueError(f"cif: impl={impl!r} (or ${IMPL_ENV}) must be one of {_IMPLS}")
    if impl == "auto":
        return "triton" if h.is_cuda and _triton_available() else "torch"
    return impl


def _check_inputs(alpha, h, padding_mask, threshold, tail_threshold, max_tokens):
    if alpha.dim() != 2 or h.dim() != 3 or h.shape[:2] != alpha.shape:
        raise ValueError(
            f"cif: expected alpha [B, T] and h [B, T, C], got {tuple(alpha.shape)} "
            f"and {tuple(h.shape)}"
        )
    if not (alpha.is_floating_point() and h.is_floating_point()):
        raise TypeError(f"cif: alpha and h must be floating point, got {alpha.dtype}, {h.dtype}")
    if padding_mask is not None and (
        padding_mask.dtype != torch.bool or padding_mask.shape != alpha.shape
    ):
        raise ValueError(
            f"cif: padding_mask must be a bool tensor of shape {tuple(alpha.shape)} "
            f"(True = pad), got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    if not threshold > 0:
        raise ValueError(f"cif: threshold must be > 0, got {threshold}")
    if tail_threshold is not None and not tail_threshold > 0:
        raise ValueError(f"cif: tail_threshold must be > 0 or None, got {tail_threshold}")
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"cif: max_tokens must be >= 0 or None, got {max_tokens}")


def _reference_output(alpha, h, padding_mask, threshold, tail_threshold, max_tokens,
                      allow_overflow) -> CifOutput:
    tokens, fire_mask, token_index = cif_reference(alpha, h, padding_mask, threshold,
                                                   tail_threshold)
    lengths = torch.tensor([len(x) for x in tokens], dtype=torch.long)
    longest = int(lengths.max()) if len(tokens) else 0
    num = longest if max_tokens is None else max_tokens
    if longest > num and not allow_overflow:
        raise ValueError(f"cif: an utterance has {longest} tokens but max_tokens={num}")
    emb = torch.stack(
        [torch.nn.functional.pad(x[:num], (0, 0, 0, num - min(len(x), num))) for x in tokens]
    ) if len(tokens) else h.new_zeros(0, num, h.size(2))
    dev = h.device
    return CifOutput(emb.to(h.dtype).to(dev), lengths.to(dev), fire_mask.to(dev),
                     token_index.to(dev))


def cif(
    alpha: Tensor,
    h: Tensor,
    padding_mask: Optional[Tensor] = None,
    threshold: float = 1.0,
    tail_threshold: Optional[float] = None,
    max_tokens: Optional[int] = None,
    allow_overflow: bool = False,
    impl: Optional[str] = None,
) -> CifOutput:
    """Integrate h [B, T, C] with weights alpha [B, T] and fire a token every `threshold`.

    Args:
        alpha: [B, T] weights (after the sigmoid; scaled in training). Clamped to
            [0, min(1, threshold)] so that one frame completes at most one token (a scaled
            alpha above 1 loses the excess, and the utterance then fires fewer than S times).
        h: [B, T, C] encoder states (any float dtype; accumulated in float32, or float64 for
            float64 inputs).
        padding_mask: [B, T] bool, True = pad, or None. Padded frames get alpha = 0 and
            contribute nothing: NaN/inf in padded alpha or h can't reach the outputs or the
            gradients (the torch path zeroes padded h; the kernels skip zero weights).
        threshold: beta. A token fires when the running weight reaches beta, and takes
            beta - a of the firing frame (a = weight accumulated so far); the leftover starts
            the next token. Every token thus integrates exactly beta of weight: with beta = 1
            this is the exact CIF rule; beta < 1 fires more often (each token a beta-sized
            share; the result equals beta * cif(alpha / beta) up to the clamp), beta > 1 less.
        tail_threshold: None (no tail, training without scaling) or > 0: after the last frame,
            a leftover weight r >= tail_threshold is emitted as one more token, renormalised
            to a full token (state * beta / r, differentiable). With scaled alphas
            (sum = S) and tail_threshold = 0.5 the result is exactly S tokens even when float
            error leaves the last fire at S - 1e-7.
        max_tokens: N, the size of the token axis (no host sync when allow_overflow=True).
            None: N = lengths.max() (one host sync on CUDA).
        allow_overflow: with max_tokens, an utterance with more than N tokens raises
            ValueError (this check is one host sync) unless allow_overflow=True: then the first
            N tokens are kept and lengths still report the full counts (lengths > N shows it).
        impl: "auto" | "torch" | "triton" | "reference" (default: $FAIRSEQ_HKD_CIF_IMPL or auto).

    The cumulative sum that places the fires is computed in float64 (float32 drifts by whole
    fires on long inputs). Gradients flow to alpha (through the fire weights and the tail
    scale; fire positions are piecewise constant) and to h.

    Returns:
        CifOutput(embeddings [B, N, C], lengths [B], fire_mask [B, T], token_index [B, T]).
    """
    _check_inputs(alpha, h, padding_mask, threshold, tail_threshold, max_tokens)
    which = _resolve_impl(impl, h)
    if which == "reference":
        return _reference_output(alpha, h, padding_mask, threshold, tail_threshold,
                                 max_tokens, allow_overflow)
    if which == "torch":  # plan + gather as one autograd node (the CPU hot path)
        from fairseq_hkd.ops.cif.torch_impl import CifFunction

        return CifOutput(*CifFunction.apply(alpha, h, padding_mask, float(threshold),
                                            tail_threshold, max_tokens, allow_overflow))
    from fairseq_hkd.ops.cif.op import cif_gather

    fp64 = h.dtype == torch.float64
    plan = cif_plan(alpha, padding_mask, threshold, tail_threshold, max_tokens, allow_overflow,
                    impl=which, fp64_weights=fp64)
    B, T, C = h.shape
    if B * T == 0:
        return CifOutput(h.new_zeros(B, plan.num_tokens, C), *plan[4:7])
    wdtype = torch.float64 if fp64 else torch.float32
    num = max(plan.num_tokens, 1)  # the op needs one row to clamp indices into
    emb = cif_gather(h, plan.w_left.to(wdtype), plan.w_right.to(wdtype), plan.idx_left,
                     plan.idx_right, num, which)
    if plan.num_tokens == 0:
        emb = emb[:, :0]
    return CifOutput(emb, plan.lengths, plan.fire_mask, plan.token_index)
