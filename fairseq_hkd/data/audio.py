"""Audio reading with soundfile: 16 kHz mono float32, resampling and down-mixing counted.

The models expect 16 kHz mono. Other sample rates are resampled (polyphase, ``scipy.signal.
resample_poly``) and counted, or rejected when ``strict_sample_rate``. Multi-channel files are
averaged to mono and counted, or rejected with ``multichannel="error"``. Counts are logged at the
1st, 10th, 100th, ... occurrence in each process (data-loader workers are separate processes).
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from typing import Optional

import numpy as np
import soundfile as sf

from fairseq_hkd.errors import UserError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class AudioError(UserError):
    """A problem with one utterance's audio; the message names the manifest line."""


class AudioCounters:
    """Per-process counts of resampled and down-mixed files, logged at powers of ten."""

    def __init__(self):
        self.counts: Counter = Counter()

    def add(self, what: str, detail: str) -> None:
        self.counts[what] += 1
        n = self.counts[what]
        if n == 10 ** int(round(math.log10(n))):
            logger.warning(f"{what}: {n} file(s) so far in this process (latest: {detail})")


COUNTERS = AudioCounters()


def check_finite(x: np.ndarray, path: str, rate: int, offset: int = 0, where: str = "") -> None:
    """Raise ``AudioError`` if the samples ``x`` ([n] or [n, channels], starting ``offset`` samples into
    the file) hold a NaN or an infinity: a float file damaged or written by a broken tool, which
    would otherwise turn every feature of the utterance into NaN."""
    finite = np.isfinite(x)
    if finite.all():
        return
    first = offset + int(np.argmin(finite.all(axis=1) if finite.ndim == 2 else finite))
    raise AudioError(f"{where + ': ' if where else ''}audio {path} has {int((~finite).sum())} non-finite sample value(s) "
                     f"(NaN or infinity), the first at {first / rate:.3f} s; the file is damaged: re-export it")


def resampled_length(n_samples: int, sr_in: int, sr_out: int = SAMPLE_RATE) -> int:
    """Samples that :func:`resample` makes of ``n_samples`` at ``sr_in``: ceil(n * sr_out / sr_in)."""
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    return -(-int(n_samples) * up // down)


def file_sample_rate(path: str, where: str = "") -> int:
    """The sample rate in a file's header (no samples are read)."""
    try:
        return int(sf.info(path).samplerate)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise unreadable_error(path, e, where) from e


CONVERT_HINT = "convert it to WAV or FLAC, e.g. ffmpeg -i IN -ac 1 -ar 16000 OUT.wav"


def unreadable_error(path: str, e: Exception, where: str = "") -> AudioError:
    """The one-line error for a file libsndfile could not open or read: what is wrong with it (missing, a
    folder, 0 bytes, not an audio format libsndfile knows: the first line of its message) and the fix."""
    tag = f"{where}: " if where else ""
    if not os.path.exists(path):
        return AudioError(f"{tag}cannot read audio {path}: no such file")
    if os.path.isdir(path):
        return AudioError(f"{tag}cannot read audio {path}: it is a folder, not a file")
    if os.path.getsize(path) == 0:
        return AudioError(f"{tag}cannot read audio {path}: the file is empty (0 bytes); re-create or remove it")
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"^Error opening '.*?': ", "", msg).rstrip(".")  # soundfile repeats the path
    return AudioError(f"{tag}cannot read audio {path}: {msg} (libsndfile reads WAV, FLAC, OGG, MP3, AIFF, ...; "
                      f"{CONVERT_HINT})")


def wrong_rate_error(path: str, where: str, rate: int, sample_rate: int = SAMPLE_RATE) -> AudioError:
    """The ``--strict-sample-rate`` error for a file at ``rate``."""
    return AudioError(
        f"{where + ': ' if where else ''}audio {path} is sampled at {rate} Hz, {sample_rate} Hz expected "
        "(--strict-sample-rate is set; resample the corpus or drop the flag to resample on the fly)"
    )


def read_audio(
    path: str,
    where: str = "",
    expected_samples: Optional[int] = None,
    sample_rate: int = SAMPLE_RATE,
    strict_sample_rate: bool = False,
    multichannel: str = "downmix",
    expected_rate: Optional[int] = None,
) -> np.ndarray:
    """Read one file as mono float32 in [-1, 1] at ``sample_rate``.

    Args:
        path: wav / flac / anything libsndfile reads.
        where: ``manifest:line`` for error messages.
        expected_samples: the manifest's ``n_samples`` (checked against the file's frame count,
            before resampling; a mismatch means the manifest and the audio disagree).
        strict_sample_rate: reject files whose rate differs instead of resampling them.
        multichannel: ``downmix`` (average channels, counted) or ``error``.
        expected_rate: the manifest's ``sample_rate`` (checked against the file's rate).

    Returns:
        float32 array [n_samples'] (n_samples' = n_samples * sample_rate / file rate, rounded up).
    """
    tag = f"{where}: " if where else ""
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise unreadable_error(path, e, where) from e
    n, channels = wav.shape
    check_finite(wav, path, sr, where=where)
    if n == 0:
        raise AudioError(f"{tag}audio {path} is empty (0 samples); remove the line or fix the file")
    if expected_samples is not None and n != expected_samples:
        raise AudioError(
            f"{tag}audio {path} has {n} samples but the manifest says {expected_samples}; "
            "regenerate the manifest (n_samples = soundfile.info(path).frames)"
        )
    if expected_rate is not None and sr != expected_rate:
        raise AudioError(
            f"{tag}audio {path} is sampled at {sr} Hz but the manifest's sample_rate says {expected_rate}; "
            "regenerate the manifest (sample_rate = soundfile.info(path).samplerate)"
        )
    if channels > 1:
        if multichannel == "error":
            raise AudioError(f"{tag}audio {path} has {channels} channels; mono is expected (or allow --multichannel downmix)")
        wav = wav.mean(axis=1, keepdims=True)
        COUNTERS.add("down-mixed to mono", f"{path}, {channels} channels")
    wav = wav[:, 0]
    if sr != sample_rate:
        if strict_sample_rate:
            raise wrong_rate_error(path, where, sr, sample_rate)
        wav = resample(wav, sr, sample_rate)
        COUNTERS.add(f"resampled to {sample_rate} Hz", f"{path}, {sr} Hz")
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal [n] -> [resampled_length(n, sr_in, sr_out)]."""
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(wav.astype(np.float64), sr_out // g, sr_in // g).astype(np.float32)
