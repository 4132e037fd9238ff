"""Sentence joins: some training rows hold two utterances with a pause between them.

Why: the long-audio transcriber decodes voice-activity segments, and a pause shorter than
``--min-silence`` leaves two sentences in one segment. A model trained on single sentences has
learnt that the fire after the last word is ``</s>``; in a joined segment that fire falls in the
middle, the decoder (allowed ``</s>`` only at the last step) puts a word there, and both sentences
suffer: two heldout utterances joined by a 0.5 s pause decode at 27 % WER against 15 % one by one
(``scripts/joined_utterances.py``, BENCHMARKS.md "Long recordings").

What: with probability ``prob`` per training batch, neighbouring rows 2k and 2k + 1 of the collated
batch (batches are sorted by length, so neighbours have similar lengths and padding stays about
the same) become one row: utterance a, ``U{min_gap..max_gap}`` frames of silence or quiet noise
from the edge-silence bank (``edge_silence.silence_bank``), utterance b. The target is
``a </s> b </s>``, the decoder input ``</s> a </s> b``, the teacher states a's (with its [SEP] on
the inner ``</s>``) then b's; CTC drops every ``</s>`` (``losses._ctc_targets``), the quantity loss
counts both. With an odd batch the last (shortest) row stays single. A model trained so records it
(``CifAsrTask.trained_join_prob``) and its decoding lets ``</s>`` compete at inner steps
(``--cif-inner-eos``): an inner ``</s>`` is a sentence boundary, dropped from the text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch

from fairseq_hkd.errors import UserError


@dataclass
class JoinConfig:
    prob: float = 0.0  # per batch
    min_gap: int = 10  # frames (10 ms) of pause between the two utterances
    max_gap: int = 60

    def enabled(self) -> bool:
        return self.prob > 0

    def check(self, bank_frames: int) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise UserError(f"--join-prob must be in [0, 1], got {self.prob:g}")
        if not 0 <= self.min_gap <= self.max_gap <= bank_frames:
            raise UserError(f"--join-min-gap-ms {self.min_gap * 10} / --join-max-gap-ms {self.max_gap * 10}: "
                            f"need 0 <= min <= max <= {bank_frames * 10} ms")


def join_batch(sample: Dict, bank: np.ndarray, cfg: JoinConfig, seed: Sequence[int], eos: int, pad: int) -> Dict:
    """A training sample dict (docs/DESIGN.md, "Sample dict") with its rows joined in pairs, or
    ``sample`` itself when the batch's draw (``np.random.default_rng(seed)``) says no or it has one row.

    Row k of the result joins rows 2k and 2k + 1: ``src_tokens`` [B', T', F] with each pair's pause
    (frames of ``bank`` [L, N, F], one level per pair, contiguous) between the two utterances,
    ``src_lengths`` [B'], ``target`` / ``prev_output_tokens`` / ``teacher_states`` concatenated along
    the target positions, ``target_lengths`` summed; ``id`` keeps the first row's id (augmentation
    seeds), ``utt_id`` names both (``"a+b"``); ``ntokens`` is unchanged, ``nsentences`` = B'.
    """
    B = int(sample["nsentences"])
    rng = np.random.default_rng(list(seed))
    if B < 2 or rng.random() >= cfg.prob:
        return sample
    net = sample["net_input"]
    src, src_len = net["src_tokens"], net["src_lengths"]
    tgt, tgt_len = sample["target"], sample["target_lengths"]
    teacher = sample.get("teacher_states")
    L, N, F = bank.shape
    groups = [[2 * k, 2 * k + 1] for k in range(B // 2)] + ([[B - 1]] if B % 2 else [])
    gaps = [int(rng.integers(cfg.min_gap, cfg.max_gap + 1)) if len(g) == 2 else 0 for g in groups]
    levels = [int(rng.integers(0, L)) for _ in groups]
    offsets = [int(rng.integers(0, N - gap + 1)) for gap in gaps]
    new_src_len = torch.stack([src_len[g].sum() + gap for g, gap in zip(groups, gaps)])
    new_tgt_len = torch.stack([tgt_len[g].sum() for g in groups])
    rows, S = len(groups), int(new_tgt_len.max())
    out_src = src.new_zeros(rows, int(new_src_len.max()), F)
    out_tgt = tgt.new_full((rows, S), pad)
    out_prev = tgt.new_full((rows, S), pad)
    out_teacher = None if teacher is None else teacher.new_zeros(rows, S, teacher.size(2))
    silence = torch.from_numpy(bank).to(device=src.device, dtype=src.dtype)
    for r, (g, gap, level, off) in enumerate(zip(groups, gaps, levels, offsets)):
        t = s = 0
        for j, b in enumerate(g):
            if j == 1:  # the pause before the second utterance
                out_src[r, t: t + gap] = silence[level, off: off + gap]
                t += gap
            n, m = int(src_len[b]), int(tgt_len[b])
            out_src[r, t: t + n] = src[b, :n]
            out_tgt[r, s: s + m] = tgt[b, :m]
            if out_teacher is not None:
                out_teacher[r, s: s + m] = teacher[b, :m]
            t, s = t + n, s + m
        # decoder input: the target shifted right behind a leading </s> (fairseq's move_eos_to_beginning)
        out_prev[r, 0] = eos
        out_prev[r, 1: s] = out_tgt[r, : s - 1]
    joined = {
        **sample,
        "id": sample["id"][[g[0] for g in groups]],
        "net_input": {**net, "src_tokens": out_src, "src_lengths": new_src_len, "prev_output_tokens": out_prev},
        "target": out_tgt,
        "target_lengths": new_tgt_len,
        "nsentences": rows,
    }
    if "utt_id" in sample:
        joined["utt_id"] = ["+".join(sample["utt_id"][b] for b in g) for g in groups]
    if out_teacher is not None:
        joined["teacher_states"] = out_teacher
    return joined
