"""Streaming recognition: audio in pieces -> text as its tokens are fixed (issue 17).

Usage::

    from fairseq_hkd.generation.transcribe import Recognizer
    rec = Recognizer.from_checkpoint("ckpt.pt", beam=1)
    stream = rec.stream(chunk_ms=640)
    for piece in pieces:                      # float32 [n] at 16 kHz, any n (even 1)
        print(stream.accept(piece), end="")  # text fixed by this piece ("" most of the time)
        print("  ...", stream.partial())     # everything so far, incl. what may still change
    print(stream.finish())                    # the whole transcript

Pipeline per piece (state carried across pieces in every stage, nothing recomputed):

    samples -> OnlineFbank (kaldi-native-fbank, the offline fbank's options: the same frames)
            -> CMVN per frame (global stats or none; per-utterance CMVN needs the whole utterance)
            -> EncoderStream (subsampler remainder, attention K/V and conv caches; chunk = chunk_ms)
            -> WeightStream (CIF weights, k // 2 frames of look-ahead)
            -> cif_stream_step (float64 running sum + partial state: the whole-utterance fires)
            -> StreamingSearch (decoder steps as tokens fire; </s> and the tail rule at finish)

With a chunk longer than the utterance the result is the offline decoding's of the raw weights'
count (``count_search=-1``: a stream fixes each token as it fires, so it cannot try other counts
the way offline decoding does by default), token for token. A
model trained with chunks (``--encoder-chunk-size`` or ``--dynamic-chunk-training``, with
``--encoder-causal-conv``) gives at every chunk size what its masked offline forward pass gives; a
full-context model can stream too, approximately (it never saw a cut-off right context).

Times: ``StreamResult.token_times`` are the fire frames' centres (as transcribe.py's),
``StreamResult.token_spans`` the stretches of audio whose weight each token integrated (token_spans.py, from
the whole stream's weights at ``finish``), and ``StreamResult.emitted_at`` the stream position (seconds of
audio accepted) when each token was fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

from fairseq_hkd.data.audio import SAMPLE_RATE
from fairseq_hkd.data.fbank import FRAME_SHIFT_MS, WAVE_SCALE, fbank_options
from fairseq_hkd.models.encoder_stream import EncoderStream, WeightStream
from fairseq_hkd.ops.cif.streaming import CifStream, cif_stream_finish, cif_stream_step
from fairseq_hkd.generation.stream_search import StreamingSearch

__all__ = ["StreamingRecognizer", "StreamResult", "StreamError", "chunk_frames"]


class StreamError(ValueError):
    """Bad input to a stream (sample rate, sample type, use after finish)."""


def chunk_frames(chunk_ms: float, downsample: int) -> int:
    """Chunk duration -> encoder frames (each ``downsample`` x 10 ms); at least one frame."""
    frame_ms = downsample * FRAME_SHIFT_MS
    n = int(chunk_ms // frame_ms)
    if n < 1:
        raise ValueError(f"--chunk-ms {chunk_ms:g} is shorter than one encoder frame ({frame_ms:g} ms)")
    return n


@dataclass
class StreamResult:
    """The final result of a stream: text, its units, and per unit its time and when it was fixed."""

    text: str
    symbols: List[str]
    token_times: List[float] = field(default_factory=list)
    emitted_at: List[float] = field(default_factory=list)
    duration: float = 0.0
    reference: Optional[str] = None  # filled by callers that have one (scoring)
    token_spans: List[Tuple[float, float]] = field(default_factory=list)  # (start, end) s, token_spans.py


class StreamingRecognizer:
    """One audio stream through a loaded model. Build it with ``Recognizer.stream()``.

    Args:
        model: a CifModel (eval mode is set here).
        generator: the :class:`CifGenerator` whose search settings (beam, eos_slack, tail threshold) apply.
        units: the task's :class:`Units` (symbols -> text).
        cmvn: the task's CMVN callable (global stats or identity).
        chunk_ms: encoder chunk duration; ``float("inf")``: one chunk (the offline computation).
        left_chunks: chunks of cached left context (None: the model's ``--encoder-left-chunks``).
        sample_rate: the caller's sample rate (must be 16 kHz: resample first).
        cmvn_kind: the task's ``--cmvn`` (``utterance`` cannot stream).
    """

    def __init__(self, model, generator, units, cmvn, chunk_ms: float = 640.0, left_chunks: Optional[int] = None,
                 sample_rate: int = SAMPLE_RATE, cmvn_kind: str = "global"):
        import kaldi_native_fbank as knf

        if sample_rate != SAMPLE_RATE:
            raise StreamError(f"the model takes {SAMPLE_RATE} Hz audio, the stream is {sample_rate} Hz: resample it first")
        if cmvn_kind == "utterance":
            raise StreamError("this model normalises features per utterance (--cmvn utterance), which needs the whole "
                              "utterance: streaming needs a model trained with --cmvn global (or none)")
        self.model = model.eval()
        self.generator = generator
        self.units = units
        self.cmvn = cmvn
        self.tgt_dict = generator.tgt_dict
        self.downsample = int(model.encoder.downsample)
        self.chunk_ms = float(chunk_ms)
        chunk = 10 ** 9 if chunk_ms == float("inf") else chunk_frames(chunk_ms, self.downsample)
        self.fbank = knf.OnlineFbank(fbank_options())
        self.encoder = EncoderStream(model.encoder, chunk, left_chunks)
        self.weights = WeightStream(model.cif)
        self.cif = CifStream.start(1, model.encoder.embed_dim)
        self.threshold = float(model.cif.threshold)
        tail = generator.tail_threshold
        self.tail_threshold = float(model.cif.tail_threshold if tail is None else tail)
        self.search = StreamingSearch(generator)
        self.frames_read = 0  # fbank frames taken from the extractor
        self.samples = 0
        self.fires: List[int] = []  # encoder frame of each CIF token
        self.alphas: List[np.ndarray] = []  # the CIF weights of each integrated piece (token spans at finish)
        self.emitted_at: List[float] = []  # seconds of audio accepted when each fixed token was fixed
        self._fixed_text = ""
        self.result: Optional[StreamResult] = None

    # ------------------------------------------------------------------ input
    def _check(self, samples) -> np.ndarray:
        if self.result is not None:
            raise StreamError("accept() after finish(): start a new stream")
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        x = np.asarray(samples)
        if x.dtype.kind not in "f":
            raise StreamError(f"expected float samples in [-1, 1], got {x.dtype} data "
                              + ("(integer PCM: divide by 32768 for int16)" if x.dtype.kind in "iu" else ""))
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise StreamError(f"expected mono samples [n], got shape {x.shape}: mix the channels down first")
        if not np.isfinite(x).all():
            raise StreamError("the samples contain NaN or infinity")
        return x.astype(np.float32, copy=False)

    def _features(self) -> torch.Tensor:
        """Fbank frames made ready since the last call, normalised: [t, 80]."""
        n = self.fbank.num_frames_ready
        frames = np.stack([self.fbank.get_frame(i) for i in range(self.frames_read, n)]) if n > self.frames_read \
            else np.zeros((0, 80), dtype=np.float32)
        if n > self.frames_read:
            self.fbank.pop(n - self.frames_read)
        self.frames_read = n
        feats = np.ascontiguousarray(self.cmvn(frames.astype(np.float32)), dtype=np.float32)
        device = next(self.model.parameters()).device
        return torch.from_numpy(feats).to(device)

    # ------------------------------------------------------------------ stages
    def _integrate(self, h: torch.Tensor, final: bool) -> None:
        alpha, h = self.weights.step(h, final=final)
        self.alphas.append(alpha.double().cpu().numpy())
        toks, self.cif = cif_stream_step(alpha[None], h[None], self.cif, threshold=self.threshold)
        self.search.add(toks.embeddings[0])
        self.fires += toks.fire_frames[0].tolist()

    def _fixed_delta(self) -> str:
        """Text of the newly fixed tokens (the fixed text grows by appending)."""
        fixed = self.search.fixed()
        n_before = len(self.emitted_at)
        self.emitted_at += [self.samples / SAMPLE_RATE] * (len(fixed) - n_before)
        text = self.units.decode(self._symbols(fixed))
        delta = text[len(self._fixed_text):] if text.startswith(self._fixed_text) else text
        self._fixed_text = text
        return delta

    def _symbols(self, tokens: List[int]) -> List[str]:
        return [self.tgt_dict[t] for t in tokens]

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def accept(self, samples, sample_rate: Optional[int] = None) -> str:
        """Feed float samples [n] (16 kHz, in [-1, 1]); returns the text fixed by them ("" if none).
        A word-separating space comes with the next word's text."""
        if sample_rate is not None and sample_rate != SAMPLE_RATE:
            raise StreamError(f"the model takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample it first")
        x = self._check(samples)
        if x.size == 0:
            return ""
        self.samples += x.size
        self.fbank.accept_waveform(SAMPLE_RATE, x * WAVE_SCALE)
        feats = self._features()
        if feats.size(0) > 0:
            self._integrate(self.encoder.accept(feats), final=False)
            residual = float(self.cif.total[0] - self.cif.fired[0].double() * self.threshold)
            min_tokens = int(self.cif.fired[0]) + (1 if residual >= self.tail_threshold else 0)
            self.search.advance(min_tokens)
        return self._fixed_delta()

    def partial(self) -> str:
        """Everything recognised so far: the fixed text and the best guess of what follows."""
        if self.result is not None:
            return self.result.text
        return self.units.decode(self._symbols(self.search.best()))

    @torch.no_grad()
    def finish(self) -> StreamResult:
        """End of stream: the last chunk, the tail rule, the remaining decoder steps. Returns the result
        (its ``text`` is the whole transcript); the stream cannot be used after this."""
        if self.result is not None:
            raise StreamError("finish() called twice")
        self.fbank.input_finished()
        feats = self._features()
        h = [self.encoder.accept(feats)] if feats.size(0) > 0 else []
        h = torch.cat(h + [self.encoder.finish()])
        self._integrate(h, final=True)
        tails, self.cif = cif_stream_finish(self.cif, self.tail_threshold, self.threshold, dtype=torch.float32)
        self.search.add(tails[0].to(h.device))
        n_enc = int(self.cif.frames[0])
        self.fires += [max(n_enc - 1, 0)] * tails[0].size(0)
        tokens = self.search.finish(self.search.n_tokens)
        self._fixed_delta()
        symbols = self._symbols(tokens)
        duration = self.samples / SAMPLE_RATE
        from fairseq_hkd.generation.plot import encoder_frame_centres
        from fairseq_hkd.generation.token_spans import emitted_token_spans

        times = [min(max(float(t), 0.0), duration)
                 for t in encoder_frame_centres(np.asarray(self.fires[: len(symbols)], dtype=np.int64), self.downsample)]
        spans = emitted_token_spans(np.concatenate(self.alphas)[:n_enc], len(self.fires), range(len(symbols)),
                                    self.downsample, duration)
        self.result = StreamResult(self.units.decode(symbols), symbols, times, self.emitted_at[: len(symbols)], duration,
                                   token_spans=spans)
        return self.result
