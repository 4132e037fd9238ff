"""80-dim log-mel filterbank (25 ms / 10 ms windows, kaldi-native-fbank) of 16 kHz mono audio.

``fbank(wav) -> [T, 80]`` and ``num_frames(n_samples) -> T``, the frame count ``fbank`` yields
without computing it (what batching and length filters use).
"""
from __future__ import annotations

import numpy as np

from fairseq_hkd.data.audio import SAMPLE_RATE

NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WAVE_SCALE = 32768.0  # Kaldi convention: features of int16-range samples


def fbank_options(num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = 0.0  # deterministic features (SpecAugment provides the noise)
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_mel_bins
    return opts


def num_frames(n_samples: int | np.ndarray, sample_rate: int = SAMPLE_RATE):
    """Frames that ``fbank`` yields for ``n_samples`` samples (snip_edges: whole windows only)."""
    win = int(sample_rate * FRAME_LENGTH_MS / 1000)
    hop = int(sample_rate * FRAME_SHIFT_MS / 1000)
    n = np.asarray(n_samples, dtype=np.int64)
    out = np.where(n >= win, 1 + (n - win) // hop, 0)
    return int(out) if out.ndim == 0 else out


def fbank(wav: np.ndarray, num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log-mel filterbank of a mono waveform.

    Args:
        wav: float32 [n] in [-1, 1] at ``sample_rate``.
    Returns:
        float32 [num_frames(n), num_mel_bins].
    """
    import kaldi_native_fbank as knf

    extractor = knf.OnlineFbank(fbank_options(num_mel_bins, sample_rate))
    extractor.accept_waveform(sample_rate, np.asarray(wav, dtype=np.float32) * WAVE_SCALE)
    extractor.input_finished()
    n = extractor.num_frames_ready
    out = np.empty((n, num_mel_bins), dtype=np.float32)
    for i in range(n):
        out[i] = extractor.get_frame(i)
    return out
