"""Files -> pieces -> decoding batches -> one result per file, in input order, with failures isolated.

Torch-free (numpy), shared by ``fairseq-hkd-transcribe`` (``Recognizer``) and the ONNX runtime,
which differ only in the ``decode`` function they pass:

1. Each file is read in blocks (``audio_stream.AudioStream``). A file of at most
   ``max_segment_s`` seconds is one piece, decoded whole (as ``fairseq-generate`` decodes an
   utterance); with ``segmenter.trim_files``, less the silence beyond the segmenter's edge pads
   before its speech onset and after its offset (``segments.trim_to_speech``). A longer one goes through the :class:`~segments.Segmenter` block by block and each
   speech segment becomes a piece, cut from a buffer that keeps only the audio a later segment can
   still need: a 60-minute file is never whole in memory, as samples, features or encoder states.
2. Pieces of consecutive files are pooled (at most ``batch_size x chunk_batches`` pieces or
   ``max_pending_s`` seconds), sorted by length and decoded ``batch_size`` at a time.
3. A file's pieces are joined into one :class:`~results.Transcript` (times offset by the piece's
   start), yielded as soon as it and every file before it are done.
4. A file that cannot be read, is empty or is shorter than the model's minimum yields a
   :class:`~results.FileError` (``AudioError`` is the only exception caught: programming errors
   propagate with their traceback); its pieces already pooled are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from fairseq_hkd.data.audio import SAMPLE_RATE, AudioError
from fairseq_hkd.generation.audio_stream import DEFAULT_BLOCK_S, AudioStream, min_samples_error
from fairseq_hkd.generation.inputs import AudioItem
from fairseq_hkd.generation.results import FileError, Segment, Transcript, Word, join_texts
from fairseq_hkd.generation.segments import Segmenter, SegmenterConfig, SpeechDetector, trim_to_speech

__all__ = ["Piece", "PieceResult", "PipelineConfig", "TranscriptionPipeline"]


@dataclass
class Piece:
    """A stretch of one file to decode: ``wav`` float32 [n] at 16 kHz from sample ``start``."""

    item_index: int
    number: int  # within its file, in reading order
    start: int
    wav: np.ndarray
    whole: bool  # the whole file (not segmented)


@dataclass
class PieceResult:
    """What ``decode`` returns per piece. Times in seconds from the piece's start; ``words``:
    (text, first token, end token) per word, token indices into ``symbols``; ``token_spans``: (start, end)
    per token (token_spans.py; None: words span their tokens' times)."""

    text: str
    symbols: List[str]
    token_times: List[float]
    token_scores: List[float]
    score: float
    n_fires: int
    words: List[Tuple[str, int, int]] = field(default_factory=list)
    plot: Optional[str] = None
    token_spans: Optional[List[Tuple[float, float]]] = None


DecodeFn = Callable[[Sequence[AudioItem], Sequence[Piece]], List[PieceResult]]
Result = Union[Transcript, FileError]


@dataclass
class PipelineConfig:
    batch_size: int = 8
    chunk_batches: int = 16  # pieces pooled (and length-sorted) this many batches at a time
    max_pending_s: float = 600.0  # ... or this many seconds of audio, whichever comes first
    block_s: float = DEFAULT_BLOCK_S
    min_samples: int = 1  # shorter files are errors (the model's minimum)
    strict_sample_rate: bool = False
    multichannel: str = "downmix"
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


@dataclass
class _FileState:
    item: AudioItem
    duration: float = 0.0
    read_done: bool = False
    error: Optional[str] = None
    n_pieces: int = 0
    done: Dict[int, Tuple[int, int, PieceResult]] = field(default_factory=dict)  # number -> (start, length, result)


class TranscriptionPipeline:
    """``run(items)`` yields one Transcript or FileError per item, in order.

    Args:
        decode: pieces (with their items) -> one PieceResult each; called with at most
            ``cfg.batch_size`` pieces, longest first.
        detector: the speech detector for long files, built on first use (``make_detector()``).
        progress: called with the seconds of audio of each decoded batch.
    """

    def __init__(self, decode: DecodeFn, make_detector: Callable[[], SpeechDetector],
                 cfg: Optional[PipelineConfig] = None,
                 progress: Optional[Callable[[float], None]] = None):
        self.decode = decode
        self.make_detector = make_detector
        self.cfg = cfg or PipelineConfig()
        self.progress = progress
        self._segmenter: Optional[Segmenter] = None

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            self._segmenter = Segmenter(self.make_detector(), self.cfg.segmenter)
        return self._segmenter

    # ------------------------------------------------------------------ driver
    def run(self, items: Sequence[AudioItem]) -> Iterator[Result]:
        cfg = self.cfg
        states: List[_FileState] = []
        pending: List[Piece] = []
        self._next = 0  # first item not yet yielded
        for idx, item in enumerate(items):
            st = _FileState(item)
            states.append(st)
            try:
                for piece in self._pieces(idx, item, st):
                    pending.append(piece)
                    if (len(pending) >= cfg.batch_size * cfg.chunk_batches
                            or sum(p.wav.shape[0] for p in pending) >= cfg.max_pending_s * SAMPLE_RATE):
                        self._flush(items, states, pending)
                        pending = []
                        yield from self._ready(states)
            except AudioError as e:
                st.error = str(e)
                pending = [p for p in pending if p.item_index != idx]
            st.read_done = True
            yield from self._ready(states)
        self._flush(items, states, pending)
        yield from self._ready(states)

    def _pieces(self, idx: int, item: AudioItem, st: _FileState) -> Iterator[Piece]:
        """Read one file: one whole piece, or its speech segments (streaming)."""
        cfg = self.cfg
        stream = AudioStream(item.audio, cfg.block_s, SAMPLE_RATE, cfg.strict_sample_rate, cfg.multichannel)
        if stream.duration <= cfg.segmenter.max_segment_s:
            wav = stream.read()
            err = min_samples_error(item.audio, wav.shape[0], cfg.min_samples)
            if err is not None:
                raise err
            st.duration, st.n_pieces = wav.shape[0] / SAMPLE_RATE, 1
            a, b = trim_to_speech(wav, cfg.segmenter, cfg.min_samples)  # (0, n) unless segmenter.trim_files
            yield Piece(idx, 0, a, wav[a:b], whole=True)
            return
        seg = self.segmenter
        seg.reset()
        buf, buf_start = np.zeros(0, dtype=np.float32), 0  # audio from sample buf_start on
        for block in stream.blocks():
            buf = np.concatenate([buf, block])
            for a, b in seg.feed(block):
                yield self._piece(idx, st, buf, buf_start, a, b)
            keep = seg.keep_from()
            if keep > buf_start:
                buf, buf_start = buf[keep - buf_start:], keep
        for a, b in seg.finish():
            yield self._piece(idx, st, buf, buf_start, a, b)
        st.duration = seg.n_samples / SAMPLE_RATE
        err = min_samples_error(item.audio, seg.n_samples, cfg.min_samples)
        if err is not None:
            raise err

    def _piece(self, idx: int, st: _FileState, buf: np.ndarray, buf_start: int, a: int, b: int) -> Piece:
        assert a >= buf_start, f"segment [{a}, {b}) starts before the kept audio ({buf_start})"
        wav = buf[a - buf_start: b - buf_start].copy()
        if wav.shape[0] < self.cfg.min_samples:  # a short segment: pad with silence to the model's minimum
            wav = np.pad(wav, (0, self.cfg.min_samples - wav.shape[0]))
        st.n_pieces += 1
        return Piece(idx, st.n_pieces - 1, a, wav, whole=False)

    def _flush(self, items: Sequence[AudioItem], states: List[_FileState], pending: List[Piece]) -> None:
        """Decode the pooled pieces, longest first, ``batch_size`` at a time."""
        order = sorted(pending, key=lambda p: -p.wav.shape[0])
        bs = self.cfg.batch_size
        for b in range(0, len(order), bs):
            batch = order[b: b + bs]
            results = self.decode([items[p.item_index] for p in batch], batch)
            assert len(results) == len(batch), f"decode returned {len(results)} results for {len(batch)} pieces"
            for p, r in zip(batch, results):
                states[p.item_index].done[p.number] = (p.start, p.wav.shape[0], r)  # the samples are not kept
            if self.progress is not None:
                self.progress(sum(p.wav.shape[0] for p in batch) / SAMPLE_RATE)

    def _ready(self, states: List[_FileState]) -> Iterator[Result]:
        """Yield finished files from the first not yet yielded on, stopping at one still in work."""
        while self._next < len(states):
            st = states[self._next]
            if st.error is None and not (st.read_done and len(st.done) == st.n_pieces):
                return
            self._next += 1
            result = FileError(st.item.utt_id, st.item.audio, st.error) if st.error else self.join(st)
            st.done = {}
            yield result

    # ------------------------------------------------------------------ joining
    def join(self, st: _FileState) -> Transcript:
        """A file's pieces, in order, -> its Transcript (times offset to the file)."""
        segments = []
        for k in sorted(st.done):
            start, length, r = st.done[k]
            t0 = start / SAMPLE_RATE
            times = [t0 + t for t in r.token_times]
            known = r.token_spans is not None
            spans = [(t0 + a, t0 + b) for a, b in r.token_spans] if known else [(t, t) for t in times]
            words = [Word(text, spans[a][0], spans[b - 1][1], float(sum(r.token_scores[a:b])))
                     for text, a, b in r.words]
            end = t0 + min(length / SAMPLE_RATE, st.duration - t0)
            segments.append(Segment(t0, end, r.text, list(r.symbols), times, list(r.token_scores), r.score, words,
                                    spans if known else []))
        results = [st.done[k][2] for k in sorted(st.done)]
        plot = results[0].plot if len(results) == 1 else None
        return Transcript(
            utt_id=st.item.utt_id, audio=st.item.audio, text=join_texts([s.text for s in segments]),
            symbols=[x for s in segments for x in s.symbols], score=float(sum(s.score for s in segments)),
            duration=st.duration, n_fires=int(sum(r.n_fires for r in results)),
            token_times=[x for s in segments for x in s.token_times], reference=st.item.reference, plot=plot,
            token_scores=[x for s in segments for x in s.token_scores], segments=segments)
