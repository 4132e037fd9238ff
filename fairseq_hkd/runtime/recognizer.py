"""``OnnxRecognizer``: an exported model directory -> transcripts, with onnxruntime and numpy only.

Python::

    from fairseq_hkd.runtime.recognizer import OnnxRecognizer
    rec = OnnxRecognizer("exp/demo-final/hkd/onnx", beam=5, threads=1)
    for d in rec.decode_files(["a.wav", "b.flac"]):
        print(d.text, d.symbols, rec.token_times(d, duration=...))

The steps are the PyTorch generator's (``fairseq_hkd/generation/cif_generator.py``): front end
(``frontend.py``) -> encoder graph -> CIF in numpy float64 (``cif.py``) -> beam search with the
one-step decoder graph, or one pass of the non-autoregressive decoder graph (``search.py``).
Imports: onnxruntime, numpy, soundfile, kaldi-native-fbank (and the torch-free
``fairseq_hkd.data`` helpers: audio reading, CMVN, unit decoding); never torch, fairseq, or
``fairseq_hkd.models`` / ``fairseq_hkd.ops``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from fairseq_hkd.data.units import PLM_NORMALISED, decode_units
from fairseq_hkd.runtime.cif import CifResult, cif_numpy, fire_frames
from fairseq_hkd.runtime.count import candidate_counts, choose_candidates, ctc_log_likelihood, scale_alpha
from fairseq_hkd.runtime.frontend import Frontend
from fairseq_hkd.runtime.model_dir import ModelDirError, read_model_dir
from fairseq_hkd.runtime.search import Hypothesis, beam_search, nar_argmax

__all__ = ["OnnxRecognizer", "Decoded", "session_options"]

@dataclass
class Decoded:
    """One utterance's decoding.

    tokens: dictionary ids without <s>/<pad>/</s>; symbols: their strings; text: the units decoded
    to words; score: summed log-probs of the best hypothesis; token_scores: per emitted token;
    fires: encoder frame that completed each CIF token [n_fires]; n_fires: CIF tokens (decoder
    steps); alpha: CIF weights of the valid encoder frames; encoder_out: [T', D] when asked for;
    steps: the CIF step (index into ``fires``) of each emitted token (an inner ``</s>``, a sentence
    boundary, takes a step but is not emitted).
    """

    tokens: List[int]
    symbols: List[str]
    text: str
    score: float
    token_scores: List[float]
    fires: np.ndarray
    n_fires: int
    alpha: np.ndarray
    encoder_out: Optional[np.ndarray] = None
    cif_embeddings: Optional[np.ndarray] = None
    steps: Optional[List[int]] = None

    @property
    def emitted_steps(self) -> List[int]:
        """The CIF step of each emitted token (``steps``, or one step per token when none was skipped)."""
        return self.steps if self.steps is not None else list(range(len(self.symbols)))


def session_options(threads: int = 1):
    """CPU session options: ``threads`` intra-op threads, sequential execution, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    return opts


def _session(path: str, threads: int, inputs: Sequence[str]):
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelDirError(f"{path} is not a loadable ONNX graph ({first[:300]})") from None
    names = [i.name for i in sess.get_inputs()]
    if list(names) != list(inputs):
        raise ModelDirError(f"{path} has inputs {names}, expected {list(inputs)}: the directory mixes files of "
                            "different exports")
    return sess


class OnnxRecognizer:
    """A loaded model directory (see ``model_dir.py``) and the search settings.

    Args:
        model_dir: what ``fairseq-hkd-export`` wrote.
        beam: beam size (1 = greedy); ignored by a non-autoregressive decoder.
        threads: onnxruntime intra-op threads per graph.
        eos_slack: None = the task's ``cif_eos_slack`` recorded at export (0 or 1).
        inner_eos: whether ``</s>`` may mark a sentence boundary inside a segment; None = recorded at
            export (a model trained with sentence joins; exports before 2026-12-04: no).
        tail_threshold: None = the model's ``cif_tail_threshold``.
        input_level: auto | off | nats: match each file's speech level to the training level
            (``data/level.py``); input_level_tolerance_db: levels this close are left as recorded.
        count_search, ctc_weight: how the CIF count is chosen (``runtime/count.py``, as
            ``fairseq-generate --cif-count-search --cif-ctc-weight``); None = the values recorded at
            export (exports before 2026-12-03: -1, the raw weights' count).
    """

    def __init__(self, model_dir: str, beam: int = 10, threads: int = 1, eos_slack: Optional[int] = None,
                 tail_threshold: Optional[float] = None, input_level: str = "auto",
                 input_level_tolerance_db: Optional[float] = None, count_search: Optional[int] = None,
                 ctc_weight: Optional[float] = None, inner_eos: Optional[bool] = None):
        self.model_dir = read_model_dir(model_dir)
        cfg = self.model_dir.config
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        self.beam = int(beam)
        self.eos_slack = int(cfg["search"]["eos_slack"] if eos_slack is None else eos_slack)
        if self.eos_slack not in (0, 1):
            raise ValueError(f"eos_slack must be 0 or 1, got {self.eos_slack}")
        search_cfg = cfg["search"]
        self.inner_eos = bool(search_cfg.get("inner_eos", False) if inner_eos is None else inner_eos)
        self.count_search = int(search_cfg.get("count_search", -1) if count_search is None else count_search)
        self.ctc_weight = float(search_cfg.get("ctc_weight", 0.0) if ctc_weight is None else ctc_weight)
        if self.count_search < -1:
            raise ValueError(f"count_search must be >= -1, got {self.count_search}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        uses_ctc = self.count_search >= 1 and self.ctc_weight > 0
        if uses_ctc and "ctc" not in cfg["files"]:
            raise ModelDirError(f"{model_dir} has no CTC graph (exported before 2026-12-03): re-export it, or decode "
                                "with count_search -1 (the raw count) or 0, or ctc_weight 0")
        self.threshold = float(cfg["cif"]["threshold"])
        self.tail_threshold = float(cfg["cif"]["tail_threshold"] if tail_threshold is None else tail_threshold)
        d = cfg["dictionary"]
        self.bos, self.pad, self.eos, self.vocab = int(d["bos"]), int(d["pad"]), int(d["eos"]), int(d["size"])
        self.symbols = self.model_dir.symbols
        self.unit = cfg["units"]["unit"]
        self.downsample = int(cfg["encoder"]["downsample"])
        self.frontend = Frontend(cfg["frontend"], input_level, input_level_tolerance_db)
        self.autoregressive = self.model_dir.autoregressive
        dec = cfg["decoder"]
        self.cache_shape = (int(dec["layers"]), int(dec["heads"]), int(dec["head_dim"]))
        self.encoder = _session(self.model_dir.file("encoder"), threads, ["fbank", "fbank_lengths"])
        self.decoder = _session(
            self.model_dir.file("decoder"), threads,
            ["prev_tokens", "c_prev", "c_cur", "step", "cache_key", "cache_value"] if self.autoregressive
            else ["cif_embeddings", "cif_lengths"])
        self.ctc = _session(self.model_dir.file("ctc"), threads, ["encoder_out"]) if uses_ctc else None

    @property
    def precision(self) -> str:
        return self.model_dir.config.get("precision", "fp32")

    # ------------------------------------------------------------------ steps
    def encode(self, feats: Sequence[np.ndarray]):
        """Features [T_b, F] -> (encoder_out [B, T', D], encoder_lengths [B], alpha [B, T'])."""
        lengths = np.array([f.shape[0] for f in feats], dtype=np.int64)
        src = np.zeros((len(feats), int(lengths.max()), feats[0].shape[1]), dtype=np.float32)
        for b, f in enumerate(feats):
            src[b, : f.shape[0]] = f
        h, enc_lengths, alpha = self.encoder.run(None, {"fbank": src, "fbank_lengths": lengths})
        return h, enc_lengths, alpha

    def _step(self, prev_tokens, c_prev, c_cur, step, cache_key, cache_value):
        return self.decoder.run(None, {
            "prev_tokens": np.ascontiguousarray(prev_tokens, dtype=np.int64),
            "c_prev": np.ascontiguousarray(c_prev, dtype=np.float32),
            "c_cur": np.ascontiguousarray(c_cur, dtype=np.float32),
            "step": np.array(step, dtype=np.int64),
            "cache_key": np.ascontiguousarray(cache_key), "cache_value": np.ascontiguousarray(cache_value)})

    def search(self, embeddings: np.ndarray, lengths: np.ndarray) -> List[Hypothesis]:
        """CIF embeddings [B, N, C], lengths [B] -> the best hypothesis per utterance."""
        if self.autoregressive:
            return beam_search(self._step, embeddings, lengths, self.beam, self.vocab, self.cache_shape,
                               self.bos, self.pad, self.eos, self.eos_slack, self.inner_eos)
        if embeddings.shape[1] == 0:  # no utterance fired: every hypothesis is just </s>
            lprobs = np.zeros((embeddings.shape[0], 0, self.vocab), dtype=np.float32)
        else:
            (lprobs,) = self.decoder.run(None, {"cif_embeddings": embeddings,
                                                "cif_lengths": np.asarray(lengths, dtype=np.int64)})
        return nar_argmax(lprobs, lengths, self.bos, self.pad, self.eos, self.eos_slack, self.inner_eos)

    def decode_features(self, feats: Sequence[np.ndarray], keep_states: bool = False) -> List[Decoded]:
        """Normalised fbank per utterance -> one :class:`Decoded` each (one batch)."""
        if not feats:
            return []
        h, enc_lengths, alpha = self.encode(feats)
        cif = cif_numpy(alpha, h, enc_lengths, self.threshold, self.tail_threshold)
        if self.count_search < 0:
            hyps = self.search(cif.embeddings, cif.lengths)
        else:
            cif, hyps = self.count_search_decode(h, enc_lengths, alpha, cif.lengths)
        fires = fire_frames(cif.fire_mask, cif.lengths, enc_lengths)
        strip = {self.bos, self.pad, self.eos}
        out = []
        for b, hyp in enumerate(hyps):
            keep = [i for i, t in enumerate(hyp.tokens.tolist()) if t not in strip]
            tokens = [int(hyp.tokens[i]) for i in keep]
            symbols = [self.symbols[t] for t in tokens]
            n_enc, n_cif = int(enc_lengths[b]), int(cif.lengths[b])
            out.append(Decoded(
                tokens, symbols, decode_units(self.unit, symbols), hyp.score,
                [float(hyp.positional_scores[i]) for i in keep], fires[b], n_cif, alpha[b, :n_enc].copy(),
                h[b, :n_enc].copy() if keep_states else None,
                cif.embeddings[b, :n_cif].copy() if keep_states else None, keep))
        return out

    def count_search_decode(self, h: np.ndarray, enc_lengths: np.ndarray, alpha: np.ndarray,
                            predicted: np.ndarray):
        """Every candidate count of ``runtime/count.py`` searched in one batch of M x B rows; ->
        (CifResult of the chosen candidates, their best hypotheses)."""
        valid = np.arange(alpha.shape[1])[None, :] < np.asarray(enc_lengths)[:, None]
        support = ((np.asarray(alpha) > 0) & valid).sum(axis=1)  # frames that can carry weight
        counts = candidate_counts(np.asarray(predicted), support, self.count_search)  # [M, B]
        M, B = counts.shape
        cands = [cif_numpy(scale_alpha(alpha, counts[m]), h, enc_lengths, self.threshold, self.tail_threshold)
                 for m in range(M)]
        N = max([c.embeddings.shape[1] for c in cands] + [0])
        emb = np.zeros((M * B, N, h.shape[2]), dtype=np.float32)
        for m, c in enumerate(cands):
            emb[m * B:(m + 1) * B, : c.embeddings.shape[1]] = c.embeddings
        hyps = self.search(emb, np.concatenate([c.lengths for c in cands]))
        if M == 1:
            return cands[0], hyps
        scores = np.array([hyp.score for hyp in hyps], dtype=np.float64).reshape(M, B)
        ctc = np.zeros((M, B))
        if self.ctc is not None:
            (lprobs,) = self.ctc.run(None, {"encoder_out": np.ascontiguousarray(h, dtype=np.float32)})
            for r, hyp in enumerate(hyps):
                m, b = divmod(r, B)
                words = hyp.tokens[:-1]  # before the final </s>; inner </s> (sentence boundaries) out
                ctc[m, b] = ctc_log_likelihood(lprobs[b, : int(enc_lengths[b])], words[words != self.eos], self.bos)
        best = choose_candidates(scores, ctc, self.ctc_weight if self.ctc is not None else 0.0, self.count_search)
        chosen = CifResult(np.zeros((B, N, h.shape[2]), dtype=np.float32), np.zeros(B, dtype=np.int64),
                           np.zeros(alpha.shape, dtype=bool))
        for b, m in enumerate(best.tolist()):
            c = cands[m]
            chosen.embeddings[b, : c.embeddings.shape[1]] = c.embeddings[b]
            chosen.lengths[b], chosen.fire_mask[b] = c.lengths[b], c.fire_mask[b]
        return chosen, [hyps[m * B + b] for b, m in enumerate(best.tolist())]

    def decode_wavs(self, wavs: Sequence[np.ndarray], batch_size: int = 8) -> List[Decoded]:
        """Mono float32 waveforms at the model's sample rate -> Decoded, in input order (batches of
        ``batch_size``, longest first)."""
        feats = [self.frontend.features(w) for w in wavs]
        return self._decode_sorted(feats, batch_size)

    def decode_files(self, paths: Sequence[str], batch_size: int = 8) -> List[Decoded]:
        """Audio files -> Decoded, in input order."""
        feats = [self.frontend.read(p)[0] for p in paths]
        return self._decode_sorted(feats, batch_size)

    def _decode_sorted(self, feats, batch_size: int) -> List[Decoded]:
        order = sorted(range(len(feats)), key=lambda i: -feats[i].shape[0])
        out: List[Optional[Decoded]] = [None] * len(feats)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            for i, d in zip(idx, self.decode_features([feats[i] for i in idx])):
                out[i] = d
        return out

    # ------------------------------------------------------------------ files (the transcriber's pipeline)
    @property
    def min_samples(self) -> int:
        """The shortest audio the model accepts (``min_source_frames`` fbank frames), in samples."""
        frame = self.model_dir.config["frontend"]["fbank"]["frame_opts"]
        ms = frame["frame_length_ms"] + (self.frontend.min_frames - 1) * frame["frame_shift_ms"]
        return int(ms * self.frontend.sample_rate / 1000)

    def decode_pieces(self, items, pieces) -> list:
        """The ``decode`` function of ``generation/pipeline.TranscriptionPipeline``: one batch of
        pieces (waveforms) -> one ``PieceResult`` each, as ``Recognizer.decode_pieces`` makes them."""
        from fairseq_hkd.generation.pipeline import PieceResult
        from fairseq_hkd.generation.results import word_spans
        from fairseq_hkd.generation.token_spans import emitted_token_spans  # numpy only

        out = []
        for piece, dec in zip(pieces, self.decode_features([self.frontend.features(p.wav) for p in pieces])):
            duration = piece.wav.shape[0] / self.frontend.sample_rate
            out.append(PieceResult(
                text=dec.text, symbols=dec.symbols, token_times=self.token_times(dec, duration),
                token_scores=dec.token_scores, score=dec.score, n_fires=dec.n_fires,
                words=[(decode_units(self.unit, dec.symbols[a:e]), a, e) for a, e in word_spans(dec.symbols, self.unit)],
                token_spans=emitted_token_spans(dec.alpha, len(dec.fires), dec.emitted_steps, self.downsample,
                                                duration)))
        return out

    def iter_transcribe(self, items, batch_size: int = 8, timestamps: bool = False, segmenter=None,
                        on_audio=None):
        """``Recognizer.iter_transcribe`` without torch: one ``Transcript`` or ``FileError`` per file,
        in input order (``items``: paths, folders or ``AudioItem``s). Files longer than
        ``segmenter.max_segment_s`` are split at pauses by Silero VAD on onnxruntime
        (``runtime/vad.py``). References are normalised by
        :func:`normalise_reference`."""
        from fairseq_hkd.generation.inputs import AudioItem, collect_inputs
        from fairseq_hkd.generation.pipeline import PipelineConfig, TranscriptionPipeline
        from fairseq_hkd.generation.segments import SegmenterConfig

        todo = []
        for it in items:
            todo += [it] if isinstance(it, AudioItem) else collect_inputs([it])
        cfg = PipelineConfig(batch_size=batch_size, min_samples=self.min_samples,
                             segmenter=segmenter or SegmenterConfig(),
                             strict_sample_rate=bool(self.frontend.cfg.get("strict_sample_rate", False)),
                             multichannel=self.frontend.cfg.get("multichannel", "downmix"))
        pipeline = TranscriptionPipeline(self.decode_pieces, _silero_vad, cfg, progress=on_audio)
        for r in pipeline.run(todo):
            if r.ok:
                if r.reference is not None:
                    r.reference = normalise_reference(r.reference, self.model_dir.config["units"])
                if not timestamps:
                    r.token_times = None
            yield r

    # ------------------------------------------------------------------ times
    def token_times(self, decoded: Decoded, duration: float) -> List[float]:
        """Seconds of each emitted token: the centre of the encoder frame whose weight completed it
        (as ``fairseq-hkd-transcribe --timestamps``), clipped to [0, duration]."""
        from fairseq_hkd.generation.plot import encoder_frame_centres  # numpy only

        steps = np.asarray(decoded.emitted_steps, dtype=np.int64)
        centres = encoder_frame_centres(decoded.fires[steps], self.downsample)
        return [min(max(float(t), 0.0), duration) for t in centres]


def _silero_vad():
    """The transcriber's speech detector for long files: Silero VAD on onnxruntime (``runtime/vad.py``)."""
    from fairseq_hkd.runtime.vad import OnnxSileroVad

    return OnnxSileroVad()


def normalise_reference(text: str, units_cfg: dict) -> str:
    """A manifest transcript as the units see it, without the tokenizer (scoring only): wordpiece and
    word (an uncased BERT tokenizer's normaliser) lower-cases and strips accents; char / spm lower-case
    with ``lowercase``; spm also applies NFKC. For the demo's and LibriSpeech's transcripts this is
    ``Units.normalise``; other text may differ in details the PyTorch path gets from the tokenizer
    (control characters, spacing around CJK characters)."""
    import unicodedata

    unit = units_cfg.get("unit", "char")
    if unit in PLM_NORMALISED:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    elif units_cfg.get("lowercase"):
        text = text.lower()
    if unit == "spm":
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def describe(rec: OnnxRecognizer) -> str:
    """One line: directory, precision, decoder type, beam."""
    kind = "AR" if rec.autoregressive else "NAR"
    return f"{os.path.abspath(rec.model_dir.path)} ({rec.precision}, {kind} decoder, beam {rec.beam})"
