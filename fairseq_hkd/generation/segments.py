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
3. Segments shorter than ``min_speech_s`` are dropped (clicks, breaths).
4. Edges (``edges="speech"``, the default): a segment closed by a pause starts ``edge_pads_s[0]``
   before its speech onset and ends ``edge_pads_s[1]`` after its speech offset, the first and last
   4-ms sub-frame within ``edge_rel_db`` of the segment's loudest (searched from ``edge_search_s``
   before the detector's first speech frame to as far after its last): the edges the model was
   trained on, whatever the detector's timing. Silero marks speech 40 ms early to 20 ms late, and a
   CIF model trained on utterances that start at their first phoneme and end with ~0.35 s of
   silence loses 1-3 WER points to that alone (BENCHMARKS.md, "Long recordings", segment edges).
   Where the segment's loudest sub-frame is less than ``edge_min_range_db`` above the noise floor
   (the 10th percentile around it), onset and offset are not well defined and the detector's
   edges are kept, as with ``edges="vad"``: ``pad_start_s`` before the first speech frame and
   ``pad_end_s`` after the last (Silero's own ``speech_pad_ms`` and 0.25 s). Cut points of rule 2
   are never moved or padded: the two pieces meet. A span is given out once the audio up to its end
   and about ``edge_search_s + edge_pads_s[0]`` beyond is analysed (0.49 s after the offset by default);
   if speech starts before, it waits for that segment's start and ends there at the latest (the
   onset pad wins over the end pad). With ``trim_files`` (off by default: as recorded, as
   ``fairseq-generate`` decodes them) a file short enough to be decoded whole (``pipeline.py``) loses
   the silence beyond the same pads (:func:`trim_to_speech`): 0.2-1 s of silence around the demo's
   heldout utterances takes the demo CIF from 8.17 to 15-17 WER, trimmed 7.99.
5. Levels are measured without the recording's DC offset (a cheap sound card's, or a file's constant
   bias): its square would otherwise raise the noise floor above ``edge_min_range_db`` below the peak
   and every segment would fall back to the detector's edges. The offset is the running mean of the
   pause frames' means (frames below the detector's ``threshold - 0.15``; the mean of all of them up to
   ``dc_window_s``, then an exponential average with that time constant, so it follows a slow drift).
   Speech frames do not count: a partial cycle of a low voice leaves a frame mean of up to a few % of
   its amplitude, too close to the 40 dB below the peak that the edges look for; nor is a frame's own
   mean removed, which would leak an onset's partial tone into the silent samples before it. Until the
   first pause the offset is taken as 0. The detector sees the audio as it is.

Memory: the probabilities, energies and 4-ms sub-frame levels of the open segment only (at most
``max_segment_s``, and ``edge_search_s`` before it);
:meth:`Segmenter.keep_from` says which audio a later segment can still need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Tuple

import numpy as np

__all__ = ["SegmenterConfig", "Segmenter", "SpeechDetector", "Span", "speech_extent", "speech_onset_offset",
           "trim_to_speech"]

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
    edges: str = "speech"  # "speech": from the speech onset / offset (rule 4); "vad": the detector's frames + pads
    edge_pads_s: Tuple[float, float] = (0.01, 0.35)  # before the onset, after the offset (chosen on heldout and dev)
    edge_search_s: float = 0.1
    edge_rel_db: float = 40.0
    edge_min_range_db: float = 30.0
    trim_files: bool = False  # files decoded whole lose the silence beyond edge_pads_s (with edges="speech")
    dc_window_s: float = 1.0  # time constant of the DC offset removed before the levels are measured (rule 5)

    def __post_init__(self):
        assert 0.0 < self.threshold < 1.0, f"threshold {self.threshold} must be in (0, 1)"
        assert self.edges in ("speech", "vad"), f"edges {self.edges!r} must be 'speech' or 'vad'"
        assert len(self.edge_pads_s) == 2 and min(self.edge_pads_s) >= 0.0, (
            f"edge pads {tuple(self.edge_pads_s)} must be two seconds >= 0 (before the onset, after the offset)")
        assert self.edge_search_s >= 0.0, self.edge_search_s
        assert 0.0 <= self.pad_end_s <= self.min_silence_s, (
            f"pad_end_s {self.pad_end_s} must be in [0, min_silence_s {self.min_silence_s}]: a segment's end pad "
            "must be audio already seen when the segment closes")
        assert self.pad_start_s >= 0.0, self.pad_start_s
        assert self.dc_window_s > 0.0, f"dc_window_s {self.dc_window_s} must be > 0"
        assert self.max_segment_s >= 4 * self.min_speech_s > 0, (self.max_segment_s, self.min_speech_s)


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(power + 1e-12)


def speech_onset_offset(db: np.ndarray, peak: float, floor: float, cfg: SegmenterConfig) -> Optional[Span]:
    """Sub-frame levels ``db`` [n] (dB) -> [first, last + 1) of the sub-frames within ``cfg.edge_rel_db``
    of ``peak`` and 10 dB above ``floor``; None where ``peak - floor < cfg.edge_min_range_db`` (noise: no
    edge to find). ``peak`` must be one of ``db``'s values or below its maximum."""
    if peak - floor < cfg.edge_min_range_db:
        return None
    loud = np.nonzero(db >= max(peak - cfg.edge_rel_db, floor + 10.0))[0]
    return int(loud[0]), int(loud[-1]) + 1


def speech_extent(wav: np.ndarray, cfg: SegmenterConfig, sub: int = 64) -> Optional[Span]:
    """A whole file's speech [onset, offset) in samples, by rule 4's levels (4-ms sub-frames; the noise
    floor is the 5th percentile of the file's sub-frame levels); None in noise or for a file shorter
    than a sub-frame."""
    n = wav.shape[0] // sub
    if n == 0:
        return None
    x = wav[: n * sub].astype(np.float64)
    db = _db(np.mean((x - x.mean()).reshape(n, sub) ** 2, axis=1))  # rule 5: without the file's DC offset
    edges = speech_onset_offset(db, float(db.max()), float(np.percentile(db, 5)), cfg)
    return None if edges is None else (edges[0] * sub, edges[1] * sub)


def trim_to_speech(wav: np.ndarray, cfg: SegmenterConfig, min_samples: int = 1) -> Span:
    """A file decoded whole -> its [start, end) with rule 4's edges: the silence before the onset beyond
    ``edge_pads_s[0]`` and after the offset beyond ``edge_pads_s[1]`` cut, none added. The whole file
    unless ``cfg.trim_files`` and ``edges="speech"``, in noise, or where the rest would be shorter than
    ``min_samples``."""
    whole = (0, wav.shape[0])
    edges = speech_extent(wav, cfg) if cfg.trim_files and cfg.edges == "speech" else None
    if edges is None:
        return whole
    pre, post = (int(round(x * cfg.sample_rate)) for x in cfg.edge_pads_s)
    a, b = max(0, edges[0] - pre), min(wav.shape[0], edges[1] + post)
    return (a, b) if b - a >= min_samples else whole


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
        self.speech_edges = cfg.edges == "speech"
        self.S = F // 8 if F % 8 == 0 else F  # sub-frame samples (64: 4 ms) for the speech edges
        self.back = int(np.ceil(cfg.edge_search_s * sr / F))  # frames searched before the first speech frame
        self.edge_pre, self.edge_post = (int(round(x * sr)) for x in cfg.edge_pads_s)
        self.reach = max(self.pad_start, self.back * F + self.edge_pre) if self.speech_edges else self.pad_start
        # a span is given out once this much audio after its end is analysed: a segment starting later
        # cannot want audio before that end (speech edges only; the detector's edges need no wait)
        self.lookahead = self.reach if self.speech_edges else 0
        self.dc_frames = max(1, int(round(cfg.dc_window_s * sr / F)))  # rule 5: the DC average's frames
        self.reset()

    def reset(self) -> None:
        """Start a new file."""
        self.detector.reset()
        self.rest = np.zeros(0, dtype=np.float32)  # samples of an incomplete frame
        self.n_frames = 0  # frames seen
        self.n_samples = 0  # samples seen
        self.start: Optional[int] = None  # first frame of the open segment (None: in a pause)
        self.from_cut = False  # the open segment starts at a cut point (rule 2): its start stays
        self.silence = 0  # frames of the current run below neg_threshold
        self.probs: List[float] = []  # per frame of the open segment
        self.energy: List[float] = []
        self.sub: List[np.ndarray] = []  # sub-frame levels (dB) per frame, from frame sub_first on
        self.sub_first = 0
        self.pending: Optional[Span] = None  # a closed span whose end is not analysed yet
        self.last_end = 0  # end sample of the last span given out
        self.dc = 0.0  # the DC offset's running estimate (rule 5)
        self.dc_seen = 0  # frames in it (a plain mean up to dc_frames)

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
        power = (frames.astype(np.float64) - self._dc(frames, probs)[:, None]) ** 2
        energy = np.log10(np.mean(power, axis=1) + 1e-10)
        sub = _db(power.reshape(n, -1, self.S).mean(axis=2))  # [n, F / S]
        out: List[Span] = []
        for p, e, d in zip(probs.tolist(), energy.tolist(), sub):
            out += self._step(p, e, d)
        return out

    def finish(self) -> List[Span]:
        """The end of the file: the open segment (if long enough) as the last span."""
        out: List[Span] = []
        if self.start is not None:
            end = self.n_frames - self.silence if self.silence else self.n_frames
            out += self._close(end, end_sample=self.n_samples)
        return out + self._give_pending(self.n_samples)

    def keep_from(self) -> int:
        """The first sample a span not yet given out can contain (audio before it can be dropped)."""
        first = self.start if self.start is not None else self.n_frames
        keep = first * self.F - self.reach
        if self.pending is not None:
            keep = min(keep, self.pending[0])
        return max(self.last_end, keep, 0)

    def _dc(self, frames: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """[n, F] frames, [n] their speech probabilities -> [n] the DC offset at each (rule 5); the
        running estimate is updated by the pause frames."""
        out = np.empty(frames.shape[0])
        for k, (m, p) in enumerate(zip(frames.mean(axis=1, dtype=np.float64).tolist(), probs.tolist())):
            if p < self.neg_threshold:
                self.dc_seen += 1
                self.dc += (m - self.dc) / min(self.dc_seen, self.dc_frames)
            out[k] = self.dc
        return out

    # ------------------------------------------------------------------ state machine
    def _step(self, p: float, e: float, sub: np.ndarray) -> List[Span]:
        i = self.n_frames
        self.n_frames += 1
        self.sub.append(sub)
        out: List[Span] = []
        if self.start is None:
            if self.pending is not None and self.n_frames * self.F >= self.pending[1] + self.lookahead:
                out += self._give_pending(self.pending[1])  # no later segment can start before its end
            if p >= self.cfg.threshold:
                self.start, self.silence, self.probs, self.energy, self.from_cut = i, 0, [p], [e], False
            else:  # a pause: keep the search window only
                self._drop_sub(i - self.back)
            return out
        self.probs.append(p)
        self.energy.append(e)
        if p < self.neg_threshold:
            self.silence += 1
            if self.silence >= self.min_silence:  # 1. a long enough pause closes the segment
                return out + self._close(i + 1 - self.silence)
        elif p >= self.cfg.threshold:
            self.silence = 0
        if len(self.probs) >= self.max_frames:  # 2. too long: cut at the best pause of the second half
            return out + self._cut()
        return out

    def _cut(self) -> List[Span]:
        half = len(self.probs) // 2
        p = np.asarray(self.probs[half:])
        e = np.convolve(np.asarray(self.energy), np.ones(3) / 3, mode="same")[half:]
        key = np.where(p < self.neg_threshold, e - 1e3, e)  # a pause frame beats any energy
        cut = self.start + half + int(np.argmin(key))
        a = self.start * self.F - self.pad_start
        out = self._give_pending(a) + self._emit(a, cut * self.F)
        k = cut - self.start
        self.start, self.probs, self.energy = cut, self.probs[k:], self.energy[k:]
        self.silence, self.from_cut = 0, True
        self.last_end = cut * self.F  # the next piece starts exactly here (no pad)
        self._drop_sub(cut - self.back)
        return out

    def _drop_sub(self, first: int) -> None:
        """Forget the sub-frame levels of frames before ``first``."""
        if first > self.sub_first:
            del self.sub[: first - self.sub_first]
            self.sub_first = first

    def _close(self, end_frame: int, end_sample: Optional[int] = None) -> List[Span]:
        start, from_cut = self.start, self.from_cut
        self.start, self.silence, self.probs, self.energy, self.from_cut = None, 0, [], [], False
        if end_frame - start < self.min_speech:  # 3. too short: a click, not speech
            return []
        a, b = start * self.F - self.pad_start, end_frame * self.F + self.pad_end
        edges = self._speech_edges(start, end_frame) if self.speech_edges else None
        if edges is not None:  # 4. the edges the model was trained on
            a, b = edges[0] - self.edge_pre, edges[1] + self.edge_post
        if from_cut:
            a = start * self.F
        out = self._give_pending(a)  # the last span's end pad yields to this one's start
        if end_sample is not None:
            b = min(b, end_sample)
        if b + self.lookahead > self.n_frames * self.F and end_sample is None:  # its end pad is not analysed yet
            self.pending = (max(a, self.last_end, 0), b)
            return out
        return out + self._emit(a, b)

    def _speech_edges(self, start: int, end_frame: int) -> Optional[Span]:
        """(onset, offset) samples of the speech in frames [start, end_frame), searched from ``back``
        frames before to ``back`` frames after; the noise floor from the non-speech frames around
        (before ``start``, from ``end_frame`` on); None where there are none or the level range is
        too small to tell."""
        k0 = max(start - self.back, self.sub_first)
        k1 = min(end_frame + self.back, self.n_frames)
        sub = self.sub[k0 - self.sub_first:]
        around = sub[: start - k0] + sub[end_frame - k0:]
        if not around:
            return None
        db = np.concatenate(sub[: k1 - k0])
        m = self.F // self.S
        peak = float(db[(start - k0) * m: (end_frame - k0) * m].max())
        floor = float(np.percentile(np.concatenate(around), 10))
        edges = speech_onset_offset(db, peak, floor, self.cfg)
        return None if edges is None else (k0 * self.F + edges[0] * self.S, k0 * self.F + edges[1] * self.S)

    def _give_pending(self, end: int) -> List[Span]:
        """The span waiting for its end audio, ending at ``end`` at the latest."""
        if self.pending is None:
            return []
        a, b = self.pending
        self.pending = None
        return self._emit(a, min(b, max(end, a + 1)))

    def _emit(self, start: int, end: int) -> List[Span]:
        start = max(start, self.last_end, 0)
        end = min(end, self.n_samples)
        if end <= start:
            return []
        self.last_end = end
        return [(start, end)]
