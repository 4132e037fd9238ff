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

Precision: the weight predictor and the integration run in float32 whatever the compute dtype
(autocast, or half parameters under fairseq's ``--fp16``, which are cast up for the predictor).
Non-finite weights are an error (:class:`FloatingPointError`: the encoder output is not finite),
except in a teacher-forced forward pass that computed in float16: there they are what fairseq
calls an fp16 overflow, and :meth:`CifMiddleware.forward` returns NaN embeddings of the target's
shape instead, so that the loss is NaN as in fairseq's own models and the criterion hands the
batch to fairseq's overflow path (update skipped, loss scale lowered; see ``criterions/cif.py``).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_hkd.ops.cif import CifOutput, cif

__all__ = ["CifMiddleware", "is_float16_compute", "scale_alpha"]


def scale_alpha(alpha: torch.Tensor, target_lengths: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """alpha [B, T] (0 at padding), target_lengths [B] -> scaled weights [B, T] summing to S_b.

    The paper's rule alpha * S / (sum alpha + eps). A frame can hold at most one unit of weight
    (the op clamps to 1; more would be two fires in one frame), so where that rule pushes frames
    above 1 -- possible whenever S is close to the number of frames -- those frames are set to 1
    and the rest rescaled to carry the remaining S - #capped exactly (repeated until none exceeds 1;
    rows without overflow are exactly the paper's rule). Rows with S > #frames of positive weight
    cannot reach S; the middleware reports them.
    """
    target = target_lengths.to(alpha.dtype).unsqueeze(1)
    scaled = alpha * (target / (alpha.sum(dim=1, keepdim=True) + eps))
    capped = torch.zeros_like(alpha, dtype=torch.bool)
    for _ in range(alpha.size(1)):  # the capped set only grows: at most T rounds, usually 0-2
        over = scaled > 1.0
        if not bool(over.any()):
            break
        capped |= over
        # the free frames share what the capped ones leave, exactly (float64, no eps): a peaky model's
        # free weights of ~1e-9 would otherwise be swamped by eps and carry too little
        free = torch.where(capped, torch.zeros_like(alpha), alpha).double()
        room = (target.double() - capped.sum(dim=1, keepdim=True).double()).clamp(min=0.0)
        total = free.sum(dim=1, keepdim=True)
        share = free / total.clamp(min=torch.finfo(torch.float64).tiny)  # 0 where every free weight is 0
        scaled = torch.where(capped, torch.ones_like(alpha), (share * room).to(alpha.dtype))
    return scaled


def is_float16_compute(x: torch.Tensor) -> bool:
    """Was ``x`` computed in float16: half itself (``--fp16``: half parameters) or made under float16
    autocast (``--amp``)? Non-finite values there are what fairseq's loss scaler calls an overflow."""
    device = x.device.type
    return x.dtype == torch.float16 or (
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16)


def _nan_output(h: torch.Tensor, target_lengths: torch.Tensor) -> CifOutput:
    """The CIF output of a teacher-forced float16 forward pass that overflowed: S_b NaN embeddings
    per utterance (the shape the decoder and the losses expect), no fires, token_index -1."""
    B, T, C = h.shape
    lengths = target_lengths.to(device=h.device, dtype=torch.long)
    return CifOutput(embeddings=h.new_full((B, int(lengths.max()), C), float("nan")), lengths=lengths,
                     fire_mask=torch.zeros(B, T, dtype=torch.bool, device=h.device),
                     token_index=torch.full((B, T), -1, dtype=torch.long, device=h.device))


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
        """h [B, T, C] (0 at padding) -> alpha [B, T] float32 in [0, 1], 0 at padding. Computes in
        h's dtype (float32 from :meth:`forward`) with the parameters cast to it: under ``--fp16``
        they are half and the predictor still runs in float32."""
        conv = F.conv1d(h.transpose(1, 2), self.conv.weight.to(h.dtype), self.conv.bias.to(h.dtype),
                        padding=self.conv.padding)
        x = self.dropout(conv.transpose(1, 2))
        alpha = torch.sigmoid(F.linear(x, self.proj.weight.to(x.dtype), self.proj.bias.to(x.dtype)).squeeze(-1).float())
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
        float16 = is_float16_compute(h)
        with torch.autocast(h.device.type, enabled=False):
            return self._forward_fp32(h.float(), padding_mask, target_lengths, tail_threshold, float16)

    def _forward_fp32(self, h, padding_mask, target_lengths, tail_threshold, float16: bool = False):
        alpha = self.predict_alpha(h, padding_mask)
        if not bool(torch.isfinite(alpha).all()):  # NaN weights would make the op's fire plan meaningless
            if float16 and target_lengths is not None:  # fp16 overflow: the loss becomes NaN (module docstring)
                return alpha, _nan_output(h, target_lengths)
            raise FloatingPointError(
                f"CIF weights are NaN/inf for batch row(s) {(~torch.isfinite(alpha)).any(1).nonzero().flatten().tolist()}: "
                "the encoder output is not finite; " + (
                    "it was computed in float16 and overflowed: decode in float32 (without --fp16)" if float16 else
                    "training diverged (lower --lr, keep --clip-norm) or the model was loaded from a damaged "
                    "checkpoint"))
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
