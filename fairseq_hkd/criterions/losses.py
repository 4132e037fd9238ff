"""Loss maths as free functions (all computed in float32, all summed over the batch).

Shapes: B batch, S target length (incl. </s>), T' encoder frames, T CIF frames, V vocabulary.
The criterions (``cif.py``, ``cif_hkd.py``) only wire these to the model's outputs.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

__all__ = [
    "label_smoothed_ce",
    "ctc_loss",
    "ctc_labels",
    "ctc_required_frames",
    "quantity_loss",
    "predicted_token_counts",
    "token_errors",
    "acd_num_negatives",
    "sample_negatives",
    "acd_loss",
    "lrd_loss",
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


def _ctc_keep(target: torch.Tensor, padding_idx: int, eos_idx: int) -> torch.Tensor:
    """[B, S] targets -> [B, S] bool: the positions CTC is trained on (every </s> and the padding out)."""
    return target.ne(padding_idx) & target.ne(eos_idx)


def _ctc_targets(target: torch.Tensor, padding_idx: int, eos_idx: int):
    """[B, S] targets -> (flat labels without </s> and padding, [B] their lengths)."""
    keep = _ctc_keep(target, padding_idx, eos_idx)
    return target[keep], keep.sum(dim=1)


def ctc_labels(target: torch.Tensor, padding_idx: int, eos_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, S] targets -> ([B, U] labels without </s> and padding, left-aligned, padded with padding_idx;
    [B] their lengths U_b)."""
    keep = _ctc_keep(target, padding_idx, eos_idx)
    lengths = keep.sum(dim=1)
    out = target.new_full((target.size(0), int(lengths.max()) if target.numel() else 0), padding_idx)
    out[torch.arange(out.size(1), device=target.device)[None, :] < lengths[:, None]] = target[keep]
    return out, lengths


def ctc_required_frames(target: torch.Tensor, padding_idx: int, eos_idx: int) -> torch.Tensor:
    """[B, S] targets -> [B] fewest frames CTC needs: labels + repeated neighbours (a blank each)."""
    keep = _ctc_keep(target, padding_idx, eos_idx)
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


# --- hierarchical distillation (cif_hkd) ------------------------------------------------------
# N: target tokens of the batch (padding removed), D: teacher width, K: negatives per token.


def acd_num_negatives(num_tokens: int, num_negatives: int, small_batch_ratio: float = 0.8) -> int:
    """K for a batch of N tokens: ``num_negatives`` when N > it, else floor(ratio * N) (<= N - 1)."""
    if num_tokens > num_negatives:
        return num_negatives
    return min(int(math.floor(small_batch_ratio * num_tokens)), max(num_tokens - 1, 0))


def sample_negatives(num_tokens: int, num_negatives: int, device=None, generator=None) -> torch.Tensor:
    """[N, K] long: for each token, K distinct indices drawn uniformly from the other N - 1 tokens.

    Per row, the K smallest of N uniform keys (the row's own key set above 1): a uniform K-subset
    without replacement. Rows are drawn in chunks so the keys stay under ~2^24 elements.
    """
    if not 0 <= num_negatives <= max(num_tokens - 1, 0):
        raise ValueError(f"cannot draw {num_negatives} distinct negatives from {num_tokens - 1} other tokens")
    out = torch.empty(num_tokens, num_negatives, dtype=torch.long, device=device)
    if num_negatives == 0:
        return out
    rows = max(1, (1 << 24) // num_tokens)
    for r0 in range(0, num_tokens, rows):
        r1 = min(r0 + rows, num_tokens)
        keys = torch.rand(r1 - r0, num_tokens, device=device, generator=generator)
        own = torch.arange(r0, r1, device=device)
        keys[own - r0, own] = 2.0
        out[r0:r1] = keys.topk(num_negatives, dim=1, largest=False, sorted=False).indices
    return out


def acd_loss(student: torch.Tensor, teacher: torch.Tensor, negatives: torch.Tensor, temperature: float,
             tokens: Optional[torch.Tensor] = None, eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Acoustic contrastive distillation (InfoNCE), summed over tokens.

    Args:
        student: [N, D] projected CIF embeddings; teacher: [N, D] teacher states (no gradient needed);
        negatives: [N, K] indices of other tokens (``sample_negatives``); temperature: tau;
        tokens: [N] target ids: a negative with the same id as the token gets logit -1e9 (None: keep all).
    Returns:
        (sum_i -log(exp(z_i.e_i / tau) / (exp(z_i.e_i / tau) + sum_k exp(z_i.e_{n_ik} / tau))),
         number of tokens whose positive logit beats every negative), z and e L2-normalised
        (x / max(|x|, eps)), in float32.
    """
    z = F.normalize(student.float(), dim=-1, eps=eps)
    e = F.normalize(teacher.detach().float(), dim=-1, eps=eps)
    sim = (z @ e.t()) / temperature                    # [N, N]: every pair, cheaper than gathering [N, K, D]
    pos = sim.diagonal()                               # [N]
    neg = sim.gather(1, negatives)                     # [N, K]
    if tokens is not None:
        neg = neg.masked_fill(tokens[negatives] == tokens[:, None], -1e9)
    logits = torch.cat([pos[:, None], neg], dim=1)     # [N, 1 + K], positive first
    loss = (torch.logsumexp(logits, dim=1) - pos).sum()
    correct = (pos > neg.max(dim=1).values).sum() if neg.size(1) > 0 else pos.new_tensor(pos.numel()).long()
    return loss, correct


def lrd_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Linguistic regression distillation: student [N, D] projected decoder states, teacher [N, D].

    Returns sum_i r_d (u_id - e_id)^2 in float32, r = sum over dims (the paper) or mean.
    """
    sq = (student.float() - teacher.detach().float()).pow(2)
    if reduction == "sum":
        return sq.sum()
    if reduction == "mean":
        return sq.mean(dim=-1).sum()
    raise ValueError(f"LRD reduction must be 'sum' or 'mean', got {reduction!r}")
