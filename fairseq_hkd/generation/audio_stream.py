"""Read an audio file in blocks as 16 kHz mono float32, so that a long recording never sits whole in memory.

Torch-free (numpy, soundfile, scipy), shared by ``fairseq-hkd-transcribe`` and the ONNX runtime.
``SoundFile.read(frames=block)`` is the only read; other sample rates are resampled block by block
with the same polyphase filter as ``fairseq_hkd.data.audio.resample`` (``scipy.signal.resample_poly``),
each block taken with ``margin`` input samples of context on both sides and trimmed, so the result
equals resampling the whole file (up to float rounding) and has ``resampled_length(n, rate)`` samples.
Multi-channel audio is averaged to mono. Problems with the file (unreadable, empty, NaN or infinite
samples) raise ``AudioError`` naming it.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import soundfile as sf

from fairseq_hkd.data.audio import (COUNTERS, SAMPLE_RATE, AudioError, check_finite, resample, unreadable_error,
                                    wrong_rate_error)

__all__ = ["AudioStream", "AudioError", "DEFAULT_BLOCK_S"]

DEFAULT_BLOCK_S = 16.384  # 16 kHz samples a block: 32 frames of 8192 (a multiple of the VAD's 512)


class AudioStream:
    """One audio file opened for block reading.

    Args:
        path: anything libsndfile reads.
        block_s: seconds of input read at a time (the memory bound of a read).
        strict_sample_rate: reject files not at ``sample_rate`` instead of resampling them.
        multichannel: ``downmix`` (average the channels, counted) or ``error``.
    """

    def __init__(self, path: str, block_s: float = DEFAULT_BLOCK_S, sample_rate: int = SAMPLE_RATE,
                 strict_sample_rate: bool = False, multichannel: str = "downmix"):
        self.path = path
        self.sample_rate = sample_rate
        try:
            info = sf.info(path)
        except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
            raise unreadable_error(path, e) from e
        self.file_rate, self.channels, self.file_frames = int(info.samplerate), int(info.channels), int(info.frames)
        if self.file_frames == 0:
            raise AudioError(f"audio {path} is empty (0 samples)")
        if self.channels > 1 and multichannel == "error":
            raise AudioError(f"audio {path} has {self.channels} channels; mono is expected (or allow downmixing)")
        if self.file_rate != sample_rate and strict_sample_rate:
            raise wrong_rate_error(path, "", self.file_rate, sample_rate)
        g = math.gcd(self.file_rate, sample_rate)
        self.up, self.down = sample_rate // g, self.file_rate // g
        # input samples per block and of context, multiples of `down` so that block edges fall on output samples
        self.block = self.down * max(1, round(block_s * self.file_rate / self.down))
        half_filter = 10 * max(self.up, self.down) / self.up  # resample_poly's filter half-length, in input samples
        self.margin = 0 if self.up == self.down else self.down * math.ceil((half_filter + 1) / self.down)

    @property
    def duration(self) -> float:
        """Seconds, from the header's frame count."""
        return self.file_frames / self.file_rate

    def blocks(self) -> Iterator[np.ndarray]:
        """Yield float32 [m] blocks at ``sample_rate`` (m = block x rate ratio; the last one shorter)."""
        if self.channels > 1:
            COUNTERS.add("down-mixed to mono", f"{self.path}, {self.channels} channels")
        if self.up != self.down:
            COUNTERS.add(f"resampled to {self.sample_rate} Hz", f"{self.path}, {self.file_rate} Hz")
        try:
            with sf.SoundFile(self.path) as f:
                yield from self._resampled(self._read(f))
        except AudioError:
            raise
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise unreadable_error(self.path, e) from e

    def read(self) -> np.ndarray:
        """The whole file as float32 [n'] (for short files)."""
        parts = list(self.blocks())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    # ------------------------------------------------------------------ internals
    def _read(self, f: sf.SoundFile) -> Iterator[np.ndarray]:
        """Mono input-rate blocks of ``self.block`` samples (the last one shorter)."""
        total = 0
        while True:
            x = f.read(frames=self.block, dtype="float32", always_2d=True)
            if x.shape[0] == 0:
                break
            check_finite(x, self.path, self.file_rate, offset=total)
            total += x.shape[0]
            yield x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
        if total == 0:
            raise AudioError(f"audio {self.path} is empty (0 samples)")

    def _resampled(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Resample a stream of input blocks: each block with ``margin`` samples either side."""
        if self.up == self.down:
            yield from blocks
            return
        ratio = self.up / self.down
        buf = np.zeros(0, dtype=np.float32)  # [left context (0 or margin)] + samples not yet resampled
        left = 0
        for x in blocks:
            buf = np.concatenate([buf, x])
            while buf.shape[0] - left >= self.block + self.margin:
                y = resample(buf[: left + self.block + self.margin], self.file_rate, self.sample_rate)
                yield y[round(left * ratio): round((left + self.block) * ratio)]
                buf = buf[left + self.block - self.margin:]
                left = self.margin
        if buf.shape[0] > left:
            yield resample(buf, self.file_rate, self.sample_rate)[round(left * ratio):]


def min_samples_error(path: str, n: int, minimum: int, sample_rate: int = SAMPLE_RATE) -> Optional[AudioError]:
    """``AudioError`` when ``n`` samples are fewer than the model's ``minimum``, else None."""
    if n >= minimum:
        return None
    return AudioError(f"audio {path} is too short: {n / sample_rate * 1000:.0f} ms, the model needs at least "
                      f"{minimum / sample_rate * 1000:.0f} ms")
