"""When each CIF token starts and ends, from the weights that integrated it (numpy only, torch-free).

A token's *time* (``--timestamps``, results.py) is the centre of the encoder frame whose weight completed it:
a point near the token's end. A word made of one unit (``--unit word``) would have ``start == end`` there.
This module gives every token a span, read off the weights:

1. the weights ``alpha`` [T'] of the valid encoder frames are scaled to sum to the token count ``n`` (as
   training and the count search scale them, proportionally here), so token k integrates the cumulative
   weight from k to k + 1;
2. within an encoder frame the weight is spread evenly over the frame's time (frame j covers
   ``downsample`` fbank frames, seconds ``[edge_j, edge_{j+1})``), so the cumulative weight C(t) is
   piecewise linear and token k spans the times where k <= C(t) <= k + 1 (contiguous tokens);
3. a span's start is drawn in to the first frame inside it that gives the token at least ``floor`` of its
   weight (the frame where it starts counts with its part after the crossing): a pause carries little
   weight, and the token after it starts where the weight rises again, not where the token before the
   pause ended (a span without such a frame keeps its crossing time). Ends stay at the crossings: the
   weight of a word is complete at its end, and what a pause after it carries belongs to the next token.

Measured against espeak-ng's own word times (benchmarks/bench_word_times.py, BENCHMARKS.md "Word times"):
word starts ~46 ms off on average at 80-ms frames (the fire: ~220 ms), ends ~100 ms (~125 ms).

Shapes: T' encoder frames, n tokens (the decoder's steps: fires + tail, ``</s>`` last).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from fairseq_hkd.generation.plot import FRAME_CENTRE_OFFSET_S, FRAME_SHIFT_S

__all__ = ["token_spans", "emitted_token_spans", "frame_edges", "DEFAULT_FLOOR"]

DEFAULT_FLOOR = 0.3  # chosen on the synthesized dev split against espeak-ng's word onsets (benchmarks/bench_word_times.py)


def frame_edges(n_frames: int, downsample: int, frame_shift_s: float = FRAME_SHIFT_S) -> np.ndarray:
    """[T' + 1] seconds: encoder frame j covers ``[edges[j], edges[j + 1])``; its centre is
    ``plot.encoder_frame_centres`` (the centre of the fbank frames it covers)."""
    j = np.arange(n_frames + 1, dtype=np.float64)
    return j * downsample * frame_shift_s + FRAME_CENTRE_OFFSET_S - frame_shift_s / 2


def token_spans(alpha: np.ndarray, n_tokens: int, downsample: int, floor: float = DEFAULT_FLOOR,
                frame_shift_s: float = FRAME_SHIFT_S) -> Tuple[np.ndarray, np.ndarray]:
    """alpha [T'] raw CIF weights of the valid frames, n_tokens >= 0 -> (starts [n], ends [n]) in seconds
    from the start of the audio (module docstring); starts <= ends, and spans do not overlap."""
    a = np.clip(np.asarray(alpha, dtype=np.float64).reshape(-1), 0.0, None)
    if n_tokens <= 0:
        return np.zeros(0), np.zeros(0)
    edges = frame_edges(a.shape[0], downsample, frame_shift_s)
    total = a.sum()
    if total <= 0:  # no weight at all: the tokens share the audio evenly
        bounds = np.linspace(edges[0], edges[-1], n_tokens + 1)
        return bounds[:-1], bounds[1:]
    a = a * (n_tokens / total)
    c = np.concatenate([[0.0], np.cumsum(a)])  # [T' + 1] cumulative weight at the frame edges
    c[-1] = float(n_tokens)  # exactly n at the end (rounding)
    levels = np.arange(n_tokens + 1, dtype=np.float64)
    # frame holding each level: the first j with c[j + 1] >= level (level 0: frame 0)
    j = np.clip(np.searchsorted(c[1:], levels, side="left"), 0, a.shape[0] - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = np.where(a[j] > 0, (levels - c[j]) / a[j], 0.0)
    cross = edges[j] + np.clip(part, 0.0, 1.0) * (edges[j + 1] - edges[j])  # [n + 1] times C(t) = level
    starts, ends = cross[:-1].copy(), cross[1:].copy()
    for k in range(n_tokens):
        frames = np.arange(j[k], j[k + 1] + 1)
        # the weight of each frame that token k integrates: its part of C between k and k + 1
        share = np.minimum(c[frames + 1], k + 1.0) - np.maximum(c[frames], float(k))
        speech = np.nonzero(share >= floor)[0] if floor > 0 else np.zeros(0, dtype=np.int64)
        if speech.size and speech[0] > 0:  # the crossing frame itself carries less than floor of it
            starts[k] = min(edges[frames[speech[0]]], ends[k])
    return starts, ends


def emitted_token_spans(alpha: np.ndarray, n_steps: int, steps: Sequence[int], downsample: int,
                        duration: float) -> List[Tuple[float, float]]:
    """The spans of the emitted tokens: ``steps`` [N] the CIF step of each (an inner ``</s>`` takes a step
    and is not emitted), ``n_steps`` the decoder's steps (the chosen count) -> [(start, end)] seconds,
    clipped to [0, duration]."""
    starts, ends = token_spans(alpha, n_steps, downsample)
    clip = lambda t: min(max(float(t), 0.0), duration)  # noqa: E731
    return [(clip(starts[k]), clip(ends[k])) for k in steps]
