"""CIF decoding in numpy: batched beam search (beam 1 = greedy) and NAR argmax, the rules of
``fairseq_hkd/generation/cif_generator.py`` (read its module docstring for why):

* one decoder step per CIF token; step i is conditioned on c_i and the tokens chosen before;
* ``<s>`` and ``<pad>`` never compete; ``</s>`` competes only at the last step L_b - 1 (and at
  L_b - 2 with ``eos_slack`` = 1);
* a hypothesis still open after its last step gets ``</s>`` appended at no cost;
* ``inner_eos`` (a model trained with sentence joins): ``</s>`` competes at every step and ends a
  hypothesis only at its last step; an inner ``</s>`` is a sentence boundary;
* score = sum of the chosen tokens' log-probs (float32, no length normalisation); finished
  hypotheses stay in the beam; only beam 0 is live at step 0.

The port keeps the generator's arithmetic (float32 scores, the same candidate layout over
``[B * K]`` rows, utterances leaving the batch when all their beams have finished), so with the
same log-probs it makes the same choices. Among exactly equal candidates the lower index (beam,
then token) wins. Shape legend: B utterances, K beam, N CIF tokens, C CIF size, V vocabulary,
L decoder layers, H heads, d head size.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Tuple

import numpy as np

__all__ = ["Hypothesis", "beam_search", "nar_argmax", "StepFn"]

# (prev_tokens [R], c_prev [R, C], c_cur [R, C], step, cache_key, cache_value [L, R, H, S, d])
#   -> (lprobs [R, V] float32, new_cache_key, new_cache_value [L, R, H, S + 1, d])
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray, np.ndarray],
                  Tuple[np.ndarray, np.ndarray, np.ndarray]]


class Hypothesis(NamedTuple):
    """tokens: int64 [n], ends with </s>; score: summed log-probs; positional_scores: float32 [n]
    (0 for an appended </s>)."""

    tokens: np.ndarray
    score: float
    positional_scores: np.ndarray


def _mask_lprobs(lprobs: np.ndarray, bos: int, pad: int) -> np.ndarray:
    lprobs = np.array(lprobs, dtype=np.float32, copy=True)
    lprobs[..., bos] = -np.inf
    lprobs[..., pad] = -np.inf
    return lprobs


def _topk(cand: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """cand [A, M] -> (values, indices) [A, k], best first; ties: lower index first."""
    if k < cand.shape[1]:
        part = np.argpartition(-cand, k - 1, axis=1)[:, :k]
        part.sort(axis=1)
    else:
        part = np.broadcast_to(np.arange(cand.shape[1]), cand.shape).copy()
    vals = np.take_along_axis(cand, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def beam_search(step_fn: StepFn, embeddings: np.ndarray, lengths: np.ndarray, beam: int, vocab: int,
                cache_shape: Tuple[int, int, int], bos: int, pad: int, eos: int,
                eos_slack: int = 0, inner_eos: bool = False) -> List[Hypothesis]:
    """The best hypothesis per utterance. embeddings [B, N, C] float32 (0 beyond lengths),
    lengths [B] int64; cache_shape (L, H, d) of the decoder step's cache."""
    bsz, max_len, cdim = embeddings.shape
    K, V = beam, vocab
    if K < 1 or eos_slack not in (0, 1):
        raise ValueError(f"beam ({K}) must be >= 1 and eos_slack ({eos_slack}) 0 or 1")
    n_steps = int(lengths.max()) if bsz > 0 else 0
    width = n_steps + 2  # </s> start symbol + n_steps tokens + appended </s>
    out_tokens = np.full((bsz * K, width), pad, dtype=np.int64)
    out_pos = np.zeros((bsz * K, width - 1), dtype=np.float32)
    out_scores = np.zeros(bsz * K, dtype=np.float32)

    utt = np.arange(bsz)  # active utterances
    row_len = np.repeat(np.asarray(lengths, dtype=np.int64), K)
    emb = np.repeat(embeddings, K, axis=0)
    tokens = out_tokens.copy()
    tokens[:, 0] = eos
    pos = out_pos.copy()
    scores = np.full((bsz, K), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0
    scores = scores.reshape(-1)
    finished = row_len == 0
    tokens[finished, 1] = eos
    L, H, d = cache_shape
    cache_k = np.zeros((L, bsz * K, H, 0, d), dtype=np.float32)
    cache_v = np.zeros_like(cache_k)
    stay = np.full(V, -np.inf, dtype=np.float32)
    stay[pad] = 0.0

    def write_back(done):
        local = (np.nonzero(done)[0][:, None] * K + np.arange(K)).reshape(-1)
        glob = (utt[done][:, None] * K + np.arange(K)).reshape(-1)
        out_tokens[glob], out_pos[glob], out_scores[glob] = tokens[local], pos[local], scores[local]

    for step in range(n_steps):
        # 1. drop utterances whose beams have all finished
        done = finished.reshape(-1, K).all(axis=1)
        if done.any():
            write_back(done)
            keep_utt = np.nonzero(~done)[0]
            if keep_utt.size == 0:
                utt = utt[:0]
                break
            keep = (keep_utt[:, None] * K + np.arange(K)).reshape(-1)
            utt, row_len, emb = utt[keep_utt], row_len[keep], emb[keep]
            tokens, pos, scores, finished = tokens[keep], pos[keep], scores[keep], finished[keep]
            cache_k, cache_v = cache_k[:, keep], cache_v[:, keep]
        n_active = utt.size

        # 2. one decoder step for every active row (c_{step-1}, c_step, y_{step-1})
        c_cur = emb[:, step]
        c_prev = emb[:, step - 1] if step > 0 else np.zeros((emb.shape[0], cdim), dtype=np.float32)
        lprobs, cache_k, cache_v = step_fn(tokens[:, step], c_prev, c_cur, step, cache_k, cache_v)
        lprobs = _mask_lprobs(lprobs, bos, pad)
        if not inner_eos:
            early = row_len - 1 - eos_slack > step  # </s> not allowed yet
            lprobs[early, eos] = -np.inf
        lprobs = np.where(finished[:, None], stay[None, :], lprobs)

        # 3. best K continuations of each utterance among its K * V candidates
        cand = (scores[:, None] + lprobs).reshape(n_active, K * V)
        top_scores, top_idx = _topk(cand, K)
        src_beam = top_idx // V
        new_tok = (top_idx % V).reshape(-1)
        order = (np.arange(n_active)[:, None] * K + src_beam).reshape(-1)
        top_scores = top_scores.reshape(-1)

        # 4. reorder to the chosen parents and append the chosen tokens
        if K > 1:
            tokens, pos, finished, scores = tokens[order], pos[order], finished[order], scores[order]
            cache_k, cache_v = cache_k[:, order], cache_v[:, order]
        pos[:, step] = np.where(finished, np.float32(0.0), top_scores - scores)
        tokens[:, step + 1] = new_tok
        scores = top_scores

        # 5. finish on </s>, or after the last CIF step (</s> appended at no cost)
        last = row_len == step + 1
        newly = ~finished & (last if inner_eos else (new_tok == eos) | last)  # inner </s>: a boundary
        append = newly & (new_tok != eos)
        tokens[:, step + 2] = np.where(append, eos, tokens[:, step + 2])
        finished = finished | newly

    if utt.size > 0:
        write_back(np.ones(utt.size, dtype=bool))
    return _best(out_tokens, out_pos, out_scores, bsz, K, eos)


def _best(tokens, pos, scores, bsz, K, eos) -> List[Hypothesis]:
    scores = scores.reshape(bsz, K)
    out = []
    for b in range(bsz):
        k = int(np.argmax(scores[b]))
        row = b * K + k
        tok = tokens[row, 1:]
        is_eos = np.nonzero(tok == eos)[0]  # the last one ends it: only <pad> follows a finished hypothesis
        n = int(is_eos[-1]) + 1 if is_eos.size and np.isfinite(scores[b, k]) else 0
        out.append(Hypothesis(tok[:n].copy(), float(scores[b, k]), pos[row, :n].copy()))
    return out


def nar_argmax(lprobs: np.ndarray, lengths: np.ndarray, bos: int, pad: int, eos: int,
               eos_slack: int = 0, inner_eos: bool = False) -> List[Hypothesis]:
    """Non-autoregressive decoding (``CifGenerator.nar_argmax``): lprobs [B, N, V] of the NAR
    decoder, argmax at every CIF position under the same </s> rules."""
    bsz, max_len, _ = lprobs.shape
    lprobs = _mask_lprobs(lprobs, bos, pad)
    if not inner_eos:
        early = np.arange(max_len)[None, :] < (np.asarray(lengths) - 1 - eos_slack)[:, None]
        lprobs[..., eos] = np.where(early, -np.inf, lprobs[..., eos])
    tok = lprobs.argmax(axis=-1)
    best = np.take_along_axis(lprobs, tok[..., None], axis=-1)[..., 0]
    out = []
    for b in range(bsz):
        n_b = int(lengths[b])
        t, s = tok[b, :n_b], best[b, :n_b]
        eos_at = np.nonzero(t == eos)[0]
        if inner_eos:  # only a </s> at the last step ends it
            eos_at = eos_at[eos_at == n_b - 1]
        if eos_at.size:
            t, s = t[: eos_at[0] + 1], s[: eos_at[0] + 1]
        else:  # no </s> predicted: append one at no cost
            t, s = np.append(t, eos), np.append(s, np.float32(0.0))
        out.append(Hypothesis(t.astype(np.int64), float(s.sum(dtype=np.float32)), s.astype(np.float32)))
    return out
