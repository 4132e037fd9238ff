"""Alignment plots of a CIF recognizer: fbank, CIF weights, fire positions and emitted tokens.

One PNG per utterance, three panels sharing a time axis in seconds:

1. the (normalised) fbank the model saw;
2. the CIF weights alpha_t per encoder frame and their running sum modulo 1 (the integrator), with
   a vertical line at every fire;
3. the emitted unit symbols, each written at the time of the fire that completed it.

Usage (the same options as ``fairseq-hkd-transcribe``; ``--plot DIR`` is required here)::

    fairseq-hkd-plot --path ckpt.pt --plot plots/ a.wav b.flac
    fairseq-hkd-plot --path ckpt.pt --plot plots/ --manifest data/test.tsv --max-files 20

Python::

    from fairseq_hkd.generation.plot import plot_alignment
    plot_alignment("utt.png", fbank, alpha, fires, symbols, downsample=4)
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np

from fairseq_hkd.data.fbank import FRAME_LENGTH_MS, FRAME_SHIFT_MS

__all__ = ["plot_alignment", "encoder_frame_centres", "cli_main"]

FRAME_SHIFT_S = FRAME_SHIFT_MS / 1000.0
FRAME_CENTRE_OFFSET_S = FRAME_LENGTH_MS / 2000.0  # centre of fbank frame 0 (snip_edges)
QUIET_LOGGERS = ("matplotlib", "PIL")  # hundreds of DEBUG lines (font scoring, PNG chunks) per plot


def quiet_plot_loggers() -> None:
    """Raise matplotlib's and PIL's loggers to WARNING unless a level was set for them: importing
    fairseq's models sets the root logger to DEBUG (fairseq/models/wav2vec/wav2vec2_classification.py
    calls ``logging.basicConfig(level=DEBUG)``)."""
    for name in QUIET_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)


def encoder_frame_centres(frames, downsample: int, frame_shift_s: float = FRAME_SHIFT_S) -> np.ndarray:
    """Encoder frame indices [L] -> seconds: the centre of the ``downsample`` fbank frames each covers."""
    frames = np.asarray(frames, dtype=np.float64)
    return (frames * downsample + (downsample - 1) / 2.0) * frame_shift_s + FRAME_CENTRE_OFFSET_S


def plot_alignment(
    path: str,
    fbank: np.ndarray,
    alpha: np.ndarray,
    fires: Sequence[int],
    symbols: Sequence[str],
    downsample: int,
    frame_shift_s: float = FRAME_SHIFT_S,
    title: Optional[str] = None,
) -> str:
    """Draw one utterance and write it to ``path`` (PNG). Returns ``path``.

    Args:
        fbank: [T, F] features (input frames, ``frame_shift_s`` apart).
        alpha: [T'] CIF weights of the valid encoder frames (``downsample`` input frames each).
        fires: [L] encoder frame that completed each CIF token (see ``fire_frames``).
        symbols: the emitted unit symbols; symbol i is drawn at fire i (extra symbols, e.g. a
            </s> appended after the last fire, go to the end of the utterance).
        downsample: input frames per encoder frame.
        frame_shift_s: input frame shift in seconds (0.01).

    Times are frame centres (as in ``fairseq-hkd-transcribe --timestamps``): a fire is drawn at
    the centre of the encoder frame that completed the token.
    """
    quiet_plot_loggers()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fbank = np.asarray(fbank, dtype=np.float32)
    alpha = np.asarray(alpha, dtype=np.float64)
    fires = np.asarray(fires, dtype=np.int64)
    if fbank.ndim != 2 or alpha.ndim != 1:
        raise ValueError(f"plot_alignment: fbank must be [T, F] and alpha [T'], got {fbank.shape}, {alpha.shape}")
    enc_s = frame_shift_s * downsample
    start = FRAME_CENTRE_OFFSET_S - frame_shift_s / 2  # left edge of fbank frame 0
    duration = start + max(fbank.shape[0] * frame_shift_s, alpha.shape[0] * enc_s)
    t_enc = start + np.arange(alpha.shape[0]) * enc_s  # left edges of the encoder frames
    fire_t = encoder_frame_centres(fires, downsample, frame_shift_s)

    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, min(30.0, 2.5 * duration + 2)), 6.5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1]})
    ax = axes[0]
    ax.imshow(fbank.T, origin="lower", aspect="auto", cmap="viridis",
              extent=(start, start + fbank.shape[0] * frame_shift_s, 0, fbank.shape[1]))
    ax.set_ylabel("fbank bin")
    if title:
        ax.set_title(title, fontsize=9)

    ax = axes[1]
    ax.step(t_enc, alpha, where="post", color="tab:blue", label="alpha")
    ax.plot(t_enc + enc_s, np.mod(np.cumsum(alpha), 1.0), color="tab:gray", lw=0.8, label="sum mod 1")
    for t in fire_t:
        ax.axvline(t, color="tab:red", lw=0.8, alpha=0.7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("CIF weight")
    ax.legend(loc="upper right", fontsize=7)

    ax = axes[2]
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    for i, sym in enumerate(symbols):
        t = fire_t[i] if i < len(fire_t) else duration
        ax.axvline(t, color="tab:red", lw=0.5, alpha=0.5)
        ax.text(t, 0.5 + 0.25 * ((i % 2) * 2 - 1) * 0.5, sym, ha="right", va="center", fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tokens")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cli_main(argv=None) -> None:
    """``fairseq-hkd-plot``: ``fairseq-hkd-transcribe`` with ``--plot DIR`` required."""
    from fairseq_hkd.generation.transcribe import cli_main as transcribe_main

    transcribe_main(argv, require_plot=True)
