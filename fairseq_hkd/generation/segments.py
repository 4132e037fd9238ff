"""Split a long recording into segments at pauses, streaming, in bounded memory.

Torch-free (numpy), shared by ``fairseq-hkd-transcribe`` and the ONNX runtime. A speech detector
(``vad.py``: Silero VAD) gives one speech probability per frame of ``frame_samples`` samples;
:class:`Segmenter` turns them into sample spans ``[start, end)`` of the original 16 kHz audio:

1. Speech starts at a frame with probability >= ``threshold`` and continues until
   ``min_silence_s`` of frames below ``threshold - 0.15`` (Silero's hysteresis): the segment ends
   at the first of those frames.
2. A segment longer than ``max_segment_s`` is cut at the best pause in its second half: a
   non-speech frame if there is one, else the frame of least energy (3-frame average), so speech
   without pauses is cut between words where it can be and never grows beyond the maximum.
3. Segments shorter than ``min_speech_s`` are dropped (clicks, breaths); the others get
   ``pad_start_s`` of audio before and ``pad_end_s`` after where the neighbours leave room (cut
   points of rule 2 are not padded: the two pieces meet). Defaults: 0.03 s before (Silero's own
   ``speech_pad_ms``) and 0.25 s after (the demo's training utterances start at the first phoneme
   and end with 0.25-0.4 s of silence; the demo model's WER moves by 2-4 points when 30-50 ms of
   silence is added to or taken from an utterance's edges: BENCHMARKS.md, "Long recordings").

Memory: the probabilities and energies of the open segment only (at most ``max_segment_s``);
:meth:`Segmenter.keep_from` says which audio a later segment can still need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Tuple

import numpy as np

__all__ = ["SegmenterConfig", "Segmenter", "SpeechDetector", "Span"]

Span = Tuple[int, int]  # [start, end) in samples of the 16 kHz audio


class SpeechDetector(Protocol):
    """Streaming per-frame speech probabilities: ``frames`` [N, frame_samples] -> [N] in [0, 1],
    consecutive calls continuing the same audio; ``reset()`` before a new file."""

    frame_samples: int

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


@dataclass
class SegmenterConfig:
    threshold: float = 0.5
    min_silence_s: float = 0.3
    min_speech_s: float = 0.25
    max_segment_s: float = 20.0
    pad_start_s: float = 0.03
    pad_end_s: float = 0.25
    sample_rate: int = 16000

    def __post_init__(self):
        assert 0.0 < self.threshold < 1.0, f"threshold {self.threshold} must be in (0, 1)"
        assert 0.0 <= self.pad_end_s <= self.min_silence_s, (
            f"pad_end_s {self.pad_end_s} must be in [0, min_silence_s {self.min_silence_s}]: a segment's end pad "
            "must be audio already seen when the segment closes")
        assert self.pad_start_s >= 0.0, self.pad_start_s
        assert self.max_segment_s >= 4 * self.min_speech_s > 0, (self.max_segment_s, self.min_speech_s)


class Segmenter:
    """Feed 16 kHz audio block by block; get the spans of speech segments as soon as they close."""

    def __init__(self, detector: SpeechDetector, cfg: Optional[SegmenterConfig] = None):
        self.detector = detector
        self.cfg = cfg = cfg or SegmenterConfig()
        self.F = F = int(detector.frame_samples)
        sr = cfg.sample_rate
        self.neg_threshold = max(cfg.threshold - 0.15, 0.01)
        self.min_silence = max(1, round(cfg.min_silence_s * sr / F))
        self.min_speech = max(1, round(cfg.min_speech_s * sr / F))
        self.max_frames = max(2, int(cfg.max_segment_s * sr // F))
        self.pad_start = int(round(cfg.pad_start_s * sr))
        self.pad_end = int(round(cfg.pad_end_s * sr))
        self.reset()

    def reset(self) -> None:
        """Start a new file."""
        self.detector.reset()
        self.rest = np.zeros(0, dtype=np.float32)  # samples of an incomplete frame
        self.n_frames = 0  # frames seen
        self.n_samples = 0  # samples seen
        self.start: Optional[int] = None  # first frame of the open segment (None: in a pause)
        self.silence = 0  # frames of the current run below neg_threshold
        self.probs: List[float] = []  # per frame of the open segment
        self.energy: List[float] = []
        self.last_end = 0  # end sample of the last span given out

    # ------------------------------------------------------------------ public
    def feed(self, samples: np.ndarray) -> List[Span]:
        """samples: float32 [n] continuing the file -> spans closed by them (in order)."""
        self.n_samples += samples.shape[0]
        x = np.concatenate([self.rest, samples.astype(np.float32, copy=False)])
        n = x.shape[0] // self.F
        self.rest = x[n * self.F:]
        if n == 0:
            return []
        frames = x[: n * self.F].reshape(n, self.F)
        probs = np.asarray(self.detector(frames), dtype=np.float64).reshape(n)
        energy = np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
        out: List[Span] = []
        for p, e in zip(probs.tolist(), energy.tolist()):
            out += self._step(p, e)
        return out

    def finish(self) -> List[Span]:
        """The end of the file: the open segment (if long enough) as the last span."""
        out: List[Span] = []
        if self.start is not None:
            end = self.n_frames - self.silence if self.silence else self.n_frames
            out += self._close(end, pad=True, end_sample=self.n_samples)
        return out

    def keep_from(self) -> int:
        """The first sample a span not yet given out can contain (audio before it can be dropped)."""
        first = self.start if self.start is not None else self.n_frames
        return max(self.last_end, first * self.F - self.pad_start, 0)

    # ------------------------------------------------------------------ state machine
    def _step(self, p: float, e: float) -> List[Span]:
        i = self.n_frames
        self.n_frames += 1
        if self.start is None:
            if p >= self.cfg.threshold:
                self.start, self.silence, self.probs, self.energy = i, 0, [p], [e]
            return []
        self.probs.append(p)
        self.energy.append(e)
        if p < self.neg_threshold:
            self.silence += 1
            if self.silence >= self.min_silence:  # 1. a long enough pause closes the segment
                return self._close(i + 1 - self.silence, pad=True)
        elif p >= self.cfg.threshold:
            self.silence = 0
        if len(self.probs) >= self.max_frames:  # 2. too long: cut at the best pause of the second half
            return self._cut()
        return []

    def _cut(self) -> List[Span]:
        half = len(self.probs) // 2
        p = np.asarray(self.probs[half:])
        e = np.convolve(np.asarray(self.energy), np.ones(3) / 3, mode="same")[half:]
        key = np.where(p < self.neg_threshold, e - 1e3, e)  # a pause frame beats any energy
        cut = self.start + half + int(np.argmin(key))
        out = self._emit(self.start * self.F - self.pad_start, cut * self.F)
        k = cut - self.start
        self.start, self.probs, self.energy = cut, self.probs[k:], self.energy[k:]
        self.silence = 0
        self.last_end = cut * self.F  # the next piece starts exactly here (no pad)
        return out

    def _close(self, end_frame: int, pad: bool, end_sample: Optional[int] = None) -> List[Span]:
        start = self.start
        self.start, self.silence, self.probs, self.energy = None, 0, [], []
        if end_frame - start < self.min_speech:  # 3. too short: a click, not speech
            return []
        end = end_frame * self.F + (self.pad_end if pad else 0)
        if end_sample is not None:
            end = min(end, end_sample)
        return self._emit(start * self.F - self.pad_start, end)

    def _emit(self, start: int, end: int) -> List[Span]:
        start = max(start, self.last_end, 0)
        end = min(end, self.n_samples)
        if end <= start:
            return []
        self.last_end = end
        return [(start, end)]

