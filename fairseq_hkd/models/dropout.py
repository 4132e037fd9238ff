"""Cheaper dropout on CPU: one 64-bit random draw gives the masks of three elements.

Shapes: any tensor x; the mask has x's shape.

``torch.nn.functional.dropout`` on CPU draws one Bernoulli sample per element (``bernoulli_``);
torch.profiler put that at 12 % of a ``cif_tiny`` training step on the 2-core development machine
(interleaved wall-clock steps there showed no gain from this module, though: BENCHMARKS.md). :class:`PackedDropout` fills ``ceil(n / 3)`` int64 words with ``random_()`` and
reads the low 48 bits of each as three int16 values u, uniform over [-32768, 32767] (the top 16
bits are not uniform: random_() draws from [0, 2^63)); element i is kept when
``u_i >= -32768 + round(p * 65536)``. So the drop probability is p rounded to a multiple of
1/65536 (0.1 -> 0.0999908), and kept elements are scaled by 1 / (1 - p_rounded): E[y] = x exactly,
as with torch's dropout. The mask is one float tensor multiplied in, so autograd's backward is a
single multiplication (torch's keeps a bool mask and a scale, the same work).

Same seed, same masks (torch's CPU generator), but not the same masks as torch's dropout.
Off CPU (CUDA's fused dropout is already cheap) and in eval mode it is torch's dropout.

:func:`use_packed_dropout` swaps every ``nn.Dropout`` / fairseq ``FairseqDropout`` of a model
(fairseq's conformer and decoder layers included); dropout has no parameters, so checkpoints are
unchanged and load either way.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout

__all__ = ["PackedDropout", "packed_dropout", "use_packed_dropout"]

_LEVELS = 65536


def packed_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` with drop probability p rounded to a multiple of 1/65536."""
    if p <= 0.0:
        return x
    n = x.numel()
    drop = round(p * _LEVELS)
    if drop >= _LEVELS:
        return x * 0.0
    # random_() fills int64 with uniform values in [0, 2^63): the low 48 bits are uniform, the top
    # 16 are not (sign bit 0), so each draw gives three int16 values, not four.
    words = torch.empty((n + 2) // 3, dtype=torch.int64, device=x.device).random_()
    u = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n].view(x.shape)
    mask = (u >= drop - _LEVELS // 2).to(x.dtype).mul_(_LEVELS / (_LEVELS - drop))
    return x * mask


class PackedDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (see the module docstring); torch's dropout off CPU."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p
        self.apply_during_inference = False  # read by fairseq's MultiheadAttention (its own dropout path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return packed_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_packed_dropout(model: nn.Module) -> int:
    """Replace each ``nn.Dropout`` and ``FairseqDropout`` with p > 0 inside ``model`` by a
    :class:`PackedDropout` of the same p; returns how many were replaced. A FairseqDropout that
    applies at inference (``apply_during_inference``) is left alone."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout) and child.p > 0:
                setattr(parent, name, PackedDropout(child.p))
                replaced += 1
            elif isinstance(child, FairseqDropout) and child.p > 0 and not child.apply_during_inference:
                setattr(parent, name, PackedDropout(child.p))
                replaced += 1
    return replaced
