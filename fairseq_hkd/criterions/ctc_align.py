"""CTC forced alignment (Viterbi) and the segment count loss it guides.

Shapes: B batch, T' encoder frames, V vocabulary, U labels (no </s>), S = U + 1 target length.

The quantity loss tells the CIF weights only how far the whole utterance's sum is from S: its gradient
is the same for every frame, whatever word was over- or under-counted. The segment count loss says where:
the CTC head's best path through the reference labels (:func:`ctc_first_frames`) gives each label a frame
f_k (where the path first emits it); the weights between two labels' frames should carry about one unit,
those before the first label at most one, those after the last label the rest of that word and </s>
(1 to 2). Outside these ranges the frames of that segment get the gradient (:func:`segment_count_loss`).
"""
from typing import Tuple

import numpy as np
import torch

__all__ = ["ctc_first_frames", "segment_count_loss"]

_NEG = -1e30


def ctc_first_frames(ctc_logits: torch.Tensor, input_lengths: torch.Tensor, labels: torch.Tensor,
                     label_lengths: torch.Tensor, blank: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CTC Viterbi path of each utterance's labels -> the first frame of each label.

    Args:
        ctc_logits: [B, T', V] (no gradient is taken); input_lengths: [B] valid frames;
        labels: [B, U] label ids (past label_lengths: anything); label_lengths: [B].
    Returns:
        (first [B, U] long: the frame where the best path enters label k (-1 past label_lengths or for
        rows without a path), ok [B] bool: rows with a path (enough frames, finite scores)).
    """
    B, T, _ = ctc_logits.shape
    U = labels.size(1)
    lp = torch.log_softmax(ctc_logits.detach().float(), dim=-1)
    L = 2 * U + 1
    ext = torch.full((B, L), blank, dtype=torch.long, device=lp.device)
    if U > 0:
        ext[:, 1::2] = labels.clamp(min=0)
    em = lp.gather(2, ext.unsqueeze(1).expand(B, T, L)).cpu().double().numpy()  # [B, T', L]
    ext = ext.cpu().numpy()
    n_states = 2 * label_lengths.cpu().numpy() + 1
    frames = input_lengths.cpu().numpy()
    s_idx = np.arange(L)
    valid_state = s_idx[None, :] < n_states[:, None]
    # a skip from s - 2 to s: s a label, not the same label as s - 2
    skip = np.zeros((B, L), dtype=bool)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    delta = np.full((B, L), _NEG)
    delta[:, 0] = em[:, 0, 0]
    if L > 1:
        delta[:, 1] = em[:, 0, 1]
    delta[~valid_state] = _NEG
    back = np.zeros((B, T, L), dtype=np.int8)  # 0: stay, 1: from s - 1, 2: from s - 2
    for t in range(1, T):
        stay = delta
        step = np.full_like(delta, _NEG)
        step[:, 1:] = delta[:, :-1]
        jump = np.full_like(delta, _NEG)
        jump[:, 2:] = np.where(skip[:, 2:], delta[:, :-2], _NEG)
        cand = np.stack([stay, step, jump], axis=-1)
        arg = cand.argmax(axis=-1)
        new = np.take_along_axis(cand, arg[..., None], axis=-1)[..., 0] + em[:, t]
        new[~valid_state] = _NEG
        live = (t < frames)[:, None]
        delta = np.where(live, new, delta)
        back[:, t] = np.where(live, arg, 0)
    first = np.full((B, U), -1, dtype=np.int64)
    ok = np.zeros(B, dtype=bool)
    for b in range(B):
        n, Tb = int(n_states[b]), int(frames[b])
        if Tb <= 0:
            continue
        ends = [n - 1] + ([n - 2] if n > 1 else [])
        s = max(ends, key=lambda e: delta[b, e])
        if delta[b, s] <= _NEG / 2:  # no path: too few frames for the labels
            continue
        ok[b] = True
        for t in range(Tb - 1, -1, -1):
            if s % 2 == 1:
                first[b, s // 2] = t  # overwritten going back: the earliest frame of the label
            s -= int(back[b, t, s])
    return torch.from_numpy(first).to(ctc_logits.device), torch.from_numpy(ok).to(ctc_logits.device)


def segment_count_loss(alpha: torch.Tensor, first: torch.Tensor, label_lengths: torch.Tensor,
                       alpha_lengths: torch.Tensor, ok: torch.Tensor,
                       slack: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """alpha [B, T'] raw weights (0 at padding), first [B, U] from :func:`ctc_first_frames`,
    label_lengths [B] U_b, alpha_lengths [B] valid frames, ok [B] rows to use.

    Segments per row: [0, f_1), [f_1, f_2), ..., [f_U, T_b): U + 1 sums of weights. Allowed ranges:
    the first [0, 1], the inner ones [1 - slack, 1 + slack], the last [1, 2]. Returns (sum over rows
    and segments of the distance outside the range, in float32; number of segments outside it).
    Rows with U = 0 or not ``ok`` contribute nothing.
    """
    B, T = alpha.shape
    U = first.size(1)
    a = alpha.float()
    prefix = torch.cat([a.new_zeros(B, 1), a.cumsum(dim=1)], dim=1)  # [B, T'+1]: P[t] = sum of frames < t
    if U == 0:
        return prefix.new_zeros(()), torch.zeros((), dtype=torch.long, device=alpha.device)
    starts = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=alpha.device),
                        first.clamp(min=0)], dim=1)                                  # [B, U+1]
    ends = torch.cat([first.clamp(min=0), torch.zeros(B, 1, dtype=torch.long, device=alpha.device)], dim=1)
    # the last segment of row b (index U_b) ends at T_b; segments past it are unused
    last = label_lengths.long()
    ends = ends.scatter(1, last[:, None], alpha_lengths.long()[:, None])
    seg = prefix.gather(1, ends) - prefix.gather(1, starts)                          # [B, U+1]
    lo = torch.full_like(seg, 1.0 - slack)
    hi = torch.full_like(seg, 1.0 + slack)
    lo[:, 0], hi[:, 0] = 0.0, 1.0
    is_last = torch.arange(U + 1, device=alpha.device)[None, :] == last[:, None]
    lo = torch.where(is_last, torch.ones_like(lo), lo)
    hi = torch.where(is_last, torch.full_like(hi, 2.0), hi)
    used = (torch.arange(U + 1, device=alpha.device)[None, :] <= last[:, None]) & (ok & (label_lengths > 0))[:, None]
    out = (torch.relu(lo - seg) + torch.relu(seg - hi)) * used
    return out.sum(), ((out > 0) & used).sum()
