"""CIF middleware: weight prediction, training-time scaling, and integrate-and-fire.

Shapes: B batch, T encoder frames, C encoder size, S target length (incl. </s>), N fired tokens.

alpha_t = sigmoid(Linear_{C->1}(Dropout(Conv1d_{C->C, k}(h))_t)) * mask_t, sigmoid in fp32, no
nonlinearity between conv and linear (the authors' predictor). In training (``target_lengths``
given), alpha'_t = alpha_t * S / (sum_t alpha_t + 1e-8) so the op fires exactly S times (frames
that this would push above 1 are capped at 1 and the others rescaled, see :func:`scale_alpha`); the
quantity loss uses the unscaled alpha. The op (``fairseq_hkd.ops.cif.cif``) runs with the tail rule
(threshold 0.5) in training too: scaled weights sum to S only up to float error, and a last token
left at 0.99999 must still be emitted. If the fire count still differs from S, :class:`CifMiddleware`
raises instead of truncating or padding.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from fairseq_hkd.ops.cif import CifOutput, cif

__all__ = ["CifMiddleware", "scale_alpha"]


def scale_alpha(alpha: torch.Tensor, target_lengths: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """alpha [B, T] (0 at padding), target_lengths [B] -> scaled weights [B, T] summing to S_b.

    The paper's rule alpha * S / (sum alpha + eps). A frame can hold at most one unit of weight
    (the op clamps to 1; more would be two fires in one frame), so where that rule pushes frames
    above 1 -- possible whenever S is close to the number of frames -- those frames are set to 1
    and the rest rescaled to carry the remaining S - #capped (repeated until none exceeds 1; rows
    without overflow are exactly the paper's rule). Rows with S > #frames cannot reach S; the
    middleware reports them.
    """
    target = target_lengths.to(alpha.dtype).unsqueeze(1)
    scaled = alpha * (target / (alpha.sum(dim=1, keepdim=True) + eps))
    capped = torch.zeros_like(alpha, dtype=torch.bool)
    for _ in range(alpha.size(1)):  # the capped set only grows: at most T rounds, usually 0-2
        over = scaled > 1.0
        if not bool(over.any()):
            break
        capped |= over
        free = torch.where(capped, torch.zeros_like(alpha), alpha)
        room = (target - capped.sum(dim=1, keepdim=True).to(alpha.dtype)).clamp(min=0.0)
        scaled = torch.where(capped, torch.ones_like(alpha), free * (room / (free.sum(dim=1, keepdim=True) + eps)))
    return scaled


class CifMiddleware(nn.Module):
    """Encoder states -> (raw weights alpha, integrated embeddings).

    Args:
        embed_dim: C.
        conv_kernel: odd kernel size of the weight predictor's conv1d (3 in the paper).
        dropout: dropout between the conv and the linear layer (0.2 in the paper).
        threshold: firing threshold beta (1.0).
        tail_threshold: emit a last token when the leftover weight exceeds this (0.5); used at
            inference and, with scaled weights, in training.
    """

    def __init__(self, embed_dim: int, conv_kernel: int = 3, dropout: float = 0.2,
                 threshold: float = 1.0, tail_threshold: float = 0.5):
        super().__init__()
        if conv_kernel % 2 != 1:
            raise ValueError(f"the CIF weight predictor's kernel must be odd, got {conv_kernel}")
        if not 0.0 < threshold:
            raise ValueError(f"CIF threshold must be positive, got {threshold}")
        self.conv = nn.Conv1d(embed_dim, embed_dim, conv_kernel, padding=conv_kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(embed_dim, 1)
        self.threshold = threshold
        self.tail_threshold = tail_threshold

    def predict_alpha(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """h [B, T, C] (0 at padding) -> alpha [B, T] float32 in [0, 1], 0 at padding."""
        x = self.dropout(self.conv(h.transpose(1, 2)).transpose(1, 2))
        alpha = torch.sigmoid(self.proj(x).squeeze(-1).float())
        if padding_mask is not None:
            alpha = alpha.masked_fill(padding_mask, 0.0)
        return alpha

    def forward(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor],
                target_lengths: Optional[torch.Tensor] = None,
                tail_threshold: Optional[float] = None) -> Tuple[torch.Tensor, CifOutput]:
        """
        Args:
            h: [B, T, C] encoder states, 0 at padding.
            padding_mask: [B, T] True at padding (or None).
            target_lengths: [B] S incl. </s>; given -> weights scaled to sum to S and N == S checked.
            tail_threshold: overrides the configured tail threshold (inference only).
        Returns:
            alpha [B, T] raw weights (float32, before scaling), CifOutput (embeddings [B, N, C]...).
        """
        # Under autocast (bf16 training on CPU) the integration still runs in float32: fire
        # placement and the integrated states must not depend on the compute dtype.
        with torch.autocast(h.device.type, enabled=False):
            return self._forward_fp32(h.float(), padding_mask, target_lengths, tail_threshold)

    def _forward_fp32(self, h, padding_mask, target_lengths, tail_threshold):
        alpha = self.predict_alpha(h, padding_mask)
        if not bool(torch.isfinite(alpha).all()):  # NaN weights would make the op's fire plan meaningless
            raise FloatingPointError(
                f"CIF weights are NaN/inf for batch row(s) {(~torch.isfinite(alpha)).any(1).nonzero().flatten().tolist()}: "
                "the encoder output is not finite; training diverged (lower --lr, keep --clip-norm) or the model "
                "was loaded from a damaged checkpoint")
        if target_lengths is None:
            tail = self.tail_threshold if tail_threshold is None else tail_threshold
            return alpha, cif(alpha, h, padding_mask, threshold=self.threshold, tail_threshold=tail)
        scaled = scale_alpha(alpha, target_lengths)
        out = cif(scaled, h, padding_mask, threshold=self.threshold,
                  tail_threshold=self.tail_threshold, max_tokens=int(target_lengths.max()))
        self._check_fires(out.lengths, target_lengths)
        return alpha, out

    @staticmethod
    def _check_fires(lengths: torch.Tensor, target_lengths: torch.Tensor) -> None:
        bad = (lengths != target_lengths.to(lengths)).nonzero().flatten()
        if bad.numel() > 0:
            b = int(bad[0])
            raise RuntimeError(
                f"CIF fired {int(lengths[b])} tokens for utterance {b} of the batch but its target "
                f"has {int(target_lengths[b])} (incl. </s>); {bad.numel()} utterance(s) differ. "
                "Scaled weights must give exactly S tokens: an utterance with fewer encoder frames "
                "than target tokens (each frame holds at most one unit of weight) cannot; filter "
                "such utterances or reduce the encoder's downsampling.")
