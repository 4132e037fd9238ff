"""Pairing PLM token states with ASR units.

Target of one utterance: units ``y_0 .. y_{U-1}`` then ``</s>`` (S = U + 1 positions). The PLM sees
``[CLS] t_1 .. t_L [SEP]``; its hidden states ``H`` are [L + 2, D]. The teacher state of target
position j (the rows of the store) is built as follows.

``wordpiece`` units (the PLM's own tokens, the paper's setting): the PLM input is exactly
``[CLS] y_0 .. y_{U-1} [SEP]`` (the unit symbols converted to ids, no re-tokenisation), so
position j pairs with PLM position j + 1: ``[CLS]`` is dropped and ``[SEP]`` pairs with ``</s>``.

Other units (``char``, ``word``, ``spm``, any inventory that is not the PLM's): the text is rebuilt from the
unit symbols, each unit's character span ``[a, b)`` in that text is recorded, the PLM tokenizes the
text with character offsets, and the state of unit j is the **mean of the states of the PLM tokens
whose spans overlap the unit's span**. So several characters of one word piece share its state, and
an spm piece spanning two word pieces gets their mean, and a ``word`` unit the mean of its word pieces
(``it's``: ``it``, ``'``, ``s``). A unit that overlaps no PLM token (the
word separator ``|``, the lone ``▁`` piece, characters the tokenizer drops) gets the mean of the
nearest PLM token before and after it. ``</s>`` pairs with ``[SEP]`` as above. For Chinese with
``char`` units and bert-base-chinese every character is one token, so this is the paper's 1:1 pairing.

Nothing here truncates: a transcript longer than the PLM's maximum length is an error.
"""
from typing import List, Sequence, Tuple

import numpy as np

from fairseq_hkd.data.units import SPM_WORD_START, WORD_SEP

__all__ = ["unit_char_spans", "pool_matrix", "wordpiece_input_ids", "align_states"]

Span = Tuple[int, int]


def unit_char_spans(symbols: Sequence[str], unit: str) -> Tuple[str, List[Span]]:
    """Rebuild the text of ``symbols`` and the character span of every unit in it.

    ``char``: ``|`` is a space; ``word``: words joined by single spaces (a span excludes the space);
    ``spm``: ``▁`` is a space (also the first one). Returns
    ``(text, spans)`` with ``len(spans) == len(symbols)``; a span covers the unit's characters,
    including the space a ``|`` or ``▁`` stands for.
    """
    parts: List[str] = []
    spans: List[Span] = []
    pos = 0
    for sym in symbols:
        if unit == "word":
            if parts:
                parts.append(" ")
                pos += 1
            parts.append(sym)
            spans.append((pos, pos + len(sym)))
            pos += len(sym)
            continue
        if unit == "char":
            piece = " " if sym == WORD_SEP else sym
        elif unit == "spm":
            piece = sym.replace(SPM_WORD_START, " ")  # a leading space is harmless: offsets index this text
        else:
            raise ValueError(f"unit_char_spans: unit {unit!r} has no character spans (wordpiece pairs 1:1)")
        parts.append(piece)
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return "".join(parts), spans


def pool_matrix(unit_spans: Sequence[Span], token_spans: Sequence[Span]) -> Tuple[np.ndarray, int]:
    """Mean-pooling weights from PLM content tokens to ASR units.

    unit_spans [U] and token_spans [L] are ``(start, end)`` character spans in one text (token spans
    from the tokenizer's offsets, special tokens excluded). Returns (P [U, L] float64 with rows
    summing to 1, so that ``P @ H_content`` gives the unit states; the number of units that overlap
    no token). Overlap is ``start < other_end and end > other_start``; a unit with no overlapping
    token averages the nearest token ending at or before its start and the nearest starting at or
    after its end.
    """
    U, L = len(unit_spans), len(token_spans)
    if L == 0:
        raise ValueError("the PLM produced no tokens for a non-empty transcript")
    P = np.zeros((U, L), dtype=np.float64)
    starts = np.array([s for s, _ in token_spans])
    ends = np.array([e for _, e in token_spans])
    unmatched = 0
    for j, (a, b) in enumerate(unit_spans):
        hit = np.flatnonzero((starts < b) & (ends > a))
        if hit.size == 0:
            unmatched += 1
            before = np.flatnonzero(ends <= a)
            after = np.flatnonzero(starts >= b)
            hit = np.array([k for k in (before[-1] if before.size else None, after[0] if after.size else None) if k is not None])
        P[j, hit] = 1.0 / hit.size
    return P, unmatched


def wordpiece_input_ids(symbols: Sequence[str], tokenizer, utt_id: str = "?") -> List[int]:
    """PLM input ids ``[CLS] y_0 .. y_{U-1} [SEP]`` for wordpiece units (no re-tokenisation).

    A symbol that is not in the PLM vocabulary means the units come from another tokenizer.
    """
    ids = tokenizer.convert_tokens_to_ids(list(symbols))
    unk, unk_tok = tokenizer.unk_token_id, tokenizer.unk_token
    for sym, i in zip(symbols, ids):
        if i is None or (i == unk and sym != unk_tok):
            raise ValueError(
                f"utterance {utt_id!r}: unit {sym!r} is not in the PLM vocabulary: the wordpiece units were "
                f"made with another tokenizer; use the PLM's tokenizer directory for --tokenizer-dir"
            )
    return [tokenizer.cls_token_id] + list(ids) + [tokenizer.sep_token_id]


def align_states(hidden: np.ndarray, unit: str, num_units: int, pool: np.ndarray = None) -> np.ndarray:
    """Teacher states of one utterance from the PLM states of ``[CLS] t_1 .. t_L [SEP]``.

    hidden [L + 2, D]; ``wordpiece``: L must equal num_units and the result is ``hidden[1:]``;
    otherwise ``pool`` [num_units, L] from ``pool_matrix``. Returns [num_units + 1, D] (last row: [SEP]).
    """
    content, sep = hidden[1:-1], hidden[-1:]
    if unit == "wordpiece":
        if content.shape[0] != num_units:
            raise ValueError(f"PLM has {content.shape[0]} content positions for {num_units} wordpiece units")
        return hidden[1:]
    if pool is None or pool.shape != (num_units, content.shape[0]):
        raise ValueError(f"pool matrix of shape {None if pool is None else pool.shape}, expected {(num_units, content.shape[0])}")
    return np.concatenate([pool @ content.astype(np.float64), sep], axis=0).astype(hidden.dtype)
