"""Time-shift augmentation: each training utterance starts a random 0..N ms late.

Why: fbank frames are 10 ms apart and the encoder's 40 or 80 ms apart, so where a recording starts
decides which part of each phoneme every frame sees. A corpus whose files all start at the same
point of the speech (the synthesized demo corpus: every file starts at its first phoneme) trains a
model on one frame phase only. Such a model changes 30 % of its test transcripts when 2.5 ms of
silence is put before the files (BENCHMARKS.md, long recordings), and voice-activity segments of a
long recording start anywhere.

What: for a training utterance the first ``U{0..max_samples}`` samples of the (16 kHz) waveform are
dropped before the fbank; with ``max_ms`` >= 10 every frame phase occurs. Dropping, rather than
adding silence, keeps the utterance's frame count at most its unshifted count (the batching sizes
stay upper bounds) and adds nothing that is not in the recording; `edge_silence.py` adds whole
frames of silence. The draw is seeded by (seed, epoch, utterance id): independent of batching and
worker processes, different every epoch, the same when a run is repeated.

It needs the waveform, so features are computed on the fly (``--feature-store no``); the task
applies it to the training split only.
"""
from __future__ import annotations

import zlib

import numpy as np

from fairseq_hkd.data.audio import SAMPLE_RATE
from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.data.manifest import ManifestEntry
from fairseq_hkd.errors import UserError


def shift_samples(max_samples: int, seed: int, epoch: int, utt_id: str) -> int:
    """The number of leading samples to drop: U{0..max_samples}, seeded by (seed, epoch, utt_id)."""
    if max_samples <= 0:
        return 0
    rng = np.random.default_rng([seed, epoch, zlib.crc32(utt_id.encode("utf-8"))])
    return int(rng.integers(0, max_samples + 1))


class TimeShiftedFeatures:
    """Wraps ``AudioFeatures`` (dataset.py): the same frames and fbank, each utterance's waveform
    first shortened at the start by ``shift_samples(...)`` samples (at most ``max_ms``)."""

    def __init__(self, audio_features, max_ms: float, seed: int):
        if max_ms < 0:
            raise UserError(f"--time-shift-max-ms must be >= 0, got {max_ms}")
        self.audio = audio_features
        self.max_samples = int(round(max_ms * SAMPLE_RATE / 1000))
        self.seed = int(seed)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def frames(self, entry: ManifestEntry) -> int:
        """The unshifted count: an upper bound of the shifted one, for batching by size."""
        return self.audio.frames(entry)

    def __call__(self, entry: ManifestEntry) -> np.ndarray:
        wav = self.audio.waveform(entry)
        n = shift_samples(self.max_samples, self.seed, self.epoch, entry.id)
        return fbank(wav[min(n, max(len(wav) - 1, 0)):])  # never below one sample
