"""Loss maths as free functions (all computed in float32, all summed over the batch).

Shapes: B batch, S target length (incl. </s>), T' encoder frames, T CIF frames, V vocabulary.
The criterions (``cif.py``, ``cif_hkd.py``) only wire these to the model's outputs.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

__all__ = [
    "label_smoothed_ce",
    "ctc_loss",
    "ctc_required_frames",
    "quantity_loss",
    "predicted_token_counts",
    "token_errors",
]


def label_smoothed_ce(logits: torch.Tensor, target: torch.Tensor, epsilon: float,
                      padding_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """logits [B, S, V], target [B, S] (padding_idx ignored) -> (smoothed loss, nll), both summed.

    fairseq's label smoothing: (1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum_v -log p_v.
    """
    if logits.shape[:2] != target.shape:
        raise ValueError(f"decoder logits {tuple(logits.shape)} do not match the target {tuple(target.shape)}")
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    return label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.reshape(-1), epsilon,
                                   ignore_index=padding_idx, reduce=True)


def _ctc_targets(target: torch.Tensor, padding_idx: int, eos_idx: int):
    """[B, S] targets -> (flat labels without </s> and padding, [B] their lengths)."""
    keep = target.ne(padding_idx) & target.ne(eos_idx)
    return target[keep], keep.sum(dim=1)


def ctc_required_frames(target: torch.Tensor, padding_idx: int, eos_idx: int) -> torch.Tensor:
    """[B, S] targets -> [B] fewest frames CTC needs: labels + repeated neighbours (a blank each)."""
    keep = target.ne(padding_idx) & target.ne(eos_idx)
    repeats = (target[:, 1:] == target[:, :-1]) & keep[:, 1:] & keep[:, :-1]
    return keep.sum(dim=1) + repeats.sum(dim=1)


def ctc_loss(ctc_logits: torch.Tensor, input_lengths: torch.Tensor, target: torch.Tensor,
             padding_idx: int, eos_idx: int, blank_idx: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """CTC over the encoder frames, targets without </s>.

    Args:
        ctc_logits: [B, T', V]; input_lengths: [B] valid frames; target: [B, S] (with </s>, padded).
    Returns:
        (loss summed over utterances, [B] bool: utterances CTC cannot align (too few frames); their
        loss is 0 and the caller should count them).
    """
    lprobs = torch.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # [T', B, V]
    labels, label_lengths = _ctc_targets(target, padding_idx, eos_idx)
    infeasible = input_lengths < ctc_required_frames(target, padding_idx, eos_idx)
    with torch.backends.cudnn.flags(enabled=False):  # cudnn's CTC has different length rules
        losses = F.ctc_loss(lprobs, labels, input_lengths, label_lengths, blank=blank_idx,
                            reduction="none", zero_infinity=True)
    return losses.masked_fill(infeasible, 0.0).sum(), infeasible


def quantity_loss(alpha: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """alpha [B, T] raw (unscaled) weights, target_lengths [B] S incl. </s> -> sum_b |sum_t alpha - S_b|."""
    return (alpha.float().sum(dim=1) - target_lengths.float()).abs().sum()


def predicted_token_counts(alpha: torch.Tensor, threshold: float, tail_threshold: float) -> torch.Tensor:
    """[B, T] raw weights -> [B] tokens CIF emits at inference: floor(sum / beta) fires plus one
    when the leftover reaches ``tail_threshold`` (sums in float64, as the op does)."""
    total = alpha.double().sum(dim=1)
    fires = torch.floor(total / threshold)
    return (fires + (total - fires * threshold >= tail_threshold).double()).long()


def token_errors(logits: torch.Tensor, target: torch.Tensor, padding_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced token errors: (#positions where argmax != target, #non-pad positions)."""
    mask = target.ne(padding_idx)
    wrong = logits.argmax(dim=-1).ne(target) & mask
    return wrong.sum(), mask.sum()
