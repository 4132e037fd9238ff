"""Transcribe audio files with a trained CIF checkpoint (console script and Python API).

Usage::

    fairseq-hkd-transcribe --path exp/checkpoint_avg10.pt a.wav b.flac recordings/
    fairseq-hkd-transcribe --path ckpt.pt --manifest data/test.tsv --beam 10 --batch-size 16 \\
        --timestamps --plot plots/ --output test.hyp.tsv
    find talks -name '*.flac' | fairseq-hkd-transcribe --path ckpt.pt --list - --format srt --output-dir subs/

Inputs (``inputs.py``): files, folders (recursive, the extensions libsndfile reads), ``--manifest``,
``--list FILE`` (``-``: stdin). Files longer than ``--max-segment`` seconds are read in blocks and
split at pauses by Silero VAD (``segments.py``, ``vad.py``) into segments decoded in batches with the
other files' (``pipeline.py``); the text is joined and times are offset to the file. A file that
cannot be read, is empty or too short gives one ``ERROR`` line naming it and why; the others are
transcribed and the exit status is 1, with the count of failures in the summary.

Outputs (``formats.py``): ``--format tsv`` (default): one line per file, in input order,
``ID<TAB>TEXT``; with ``--timestamps`` a third field lists every emitted unit with its time in seconds,
``SYMBOL:TIME`` separated by spaces (split on the last colon). ``text``, ``json`` (per-token times and
scores, per-word times, segments) and ``srt`` / ``vtt`` subtitles, to one stream or per file with
``--output-dir``. A unit's time is the centre of the encoder frame whose CIF weight completed it
(encoder frame = model downsampling x 10 ms fbank shift; the first fbank frame is centred at
12.5 ms), clipped to its segment. IDs are the manifest ids, the file names without extension, or
for a folder the paths below it without extension. With a manifest the summary line also reports
WER/CER against its transcripts, normalised as the units normalise text (``Units.normalise``: for
WordPiece the tokenizer's lower-casing and accent stripping), the references fairseq-generate scores
(same WER on the same checkpoint and data; see data/units.py for unknown units and
data/wordpiece_join.py for the few WordPiece spellings that differ).
Only INFO lines of this package reach the console (matplotlib/PIL DEBUG chatter is silenced).

The checkpoint's task config names its data directory (``dict.txt``, ``cmvn.npz`` for global CMVN,
the tokenizer or sentencepiece model): pass ``--data DIR`` when it has moved.

Python::

    from fairseq_hkd.generation.transcribe import Recognizer
    rec = Recognizer.from_checkpoint("ckpt.pt", beam=10)
    for r in rec.iter_transcribe(["a.wav", "talks/"]):
        if r.ok:
            print(r.utt_id, r.text, [(s.start, s.end, s.text) for s in r.segments])
        else:
            print("failed:", r.line())
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from fairseq_hkd.data.audio import AudioError
from fairseq_hkd.generation.cli_options import (add_count_args, add_level_arg, add_output_args, add_segmenter_args, level_from_args,
                                                segmenter_from_args)
from fairseq_hkd.generation.formats import SUBTITLES, OutputWriter
from fairseq_hkd.generation.inputs import AudioItem, InputError, collect_inputs, file_id
from fairseq_hkd.generation.pipeline import Piece, PieceResult, PipelineConfig, TranscriptionPipeline
from fairseq_hkd.generation.progress import Progress
from fairseq_hkd.generation.results import FileError, Transcript, word_spans
from fairseq_hkd.generation.segments import SegmenterConfig
from fairseq_hkd.generation.token_spans import emitted_token_spans

logger = logging.getLogger(__name__)

__all__ = ["Recognizer", "Transcript", "FileError", "AudioItem", "cli_main"]

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class Recognizer:
    """A loaded CIF model + its task (dictionary, units, feature settings) + a CIF generator, and the
    pipeline that feeds it files (long ones split at pauses)."""

    def __init__(self, model, task, beam: int = 10, device: Union[str, torch.device] = "cpu", lm_model=None,
                 lm_weight: float = 0.0, segmenter: Optional[SegmenterConfig] = None, input_level: str = "auto",
                 input_level_tolerance_db: Optional[float] = None, count_search: Optional[int] = None,
                 ctc_weight: Optional[float] = None, inner_eos: Optional[str] = None):
        """lm_model, lm_weight: shallow fusion with a fairseq LM over the same dictionary (lm_fusion.py);
        segmenter: how files longer than ``segmenter.max_segment_s`` are split (segments.py);
        input_level: ``auto`` (match each file's or segment's speech level to the model's training
        level), ``off``, or a level in nats; input_level_tolerance_db: levels this close to it are
        left as recorded (None: data/level.py's ``TOLERANCE_DB``, 0); count_search, ctc_weight: how
        the CIF count is chosen (generation/cif_generator.py; None: the task's ``cif_count_search``
        and ``cif_ctc_weight``, as fairseq-generate); inner_eos: auto | yes | no, whether ``</s>`` may
        mark a sentence boundary inside a segment (None: the task's ``cif_inner_eos``; auto: yes for a
        model trained with sentence joins)."""
        from fairseq_hkd.data.cmvn import build_cmvn
        from fairseq_hkd.data.level import model_level
        from fairseq_hkd.generation.cif_generator import CifGenerator

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.tgt_dict = task.target_dictionary
        lm_model = lm_model.to(self.device).eval() if lm_model is not None else None
        cfg = task.cfg
        count_search = getattr(cfg, "cif_count_search", 1) if count_search is None else count_search
        ctc_weight = task.decoding_ctc_weight(ctc_weight, count_search)  # 0 for an untrained CTC head
        self.generator = CifGenerator([self.model], self.tgt_dict, beam_size=beam, nbest=1, lm_model=lm_model,
                                      lm_weight=lm_weight, count_search=count_search, ctc_weight=ctc_weight,
                                      inner_eos=task.decoding_inner_eos(inner_eos))
        self.cmvn = build_cmvn(cfg.cmvn, cfg.cmvn_stats or os.path.join(cfg.data, "cmvn.npz"))
        self.level_target, self.level_tolerance_db = model_level(
            input_level, getattr(cfg, "input_level", "off"), str(cfg.cmvn), getattr(self.cmvn, "mean", None),
            input_level_tolerance_db)
        self.downsample = int(model.encoder.downsample)
        self.segmenter = segmenter or SegmenterConfig()
        self._vad = None

    @classmethod
    def from_checkpoint(cls, path: str, data: Optional[str] = None, beam: int = 10, cpu: bool = False,
                        model_overrides: Optional[dict] = None, lm_path: Optional[str] = None,
                        lm_weight: float = 0.0, segmenter: Optional[SegmenterConfig] = None,
                        input_level: str = "auto", input_level_tolerance_db: Optional[float] = None,
                        count_search: Optional[int] = None, ctc_weight: Optional[float] = None,
                        inner_eos: Optional[str] = None) -> "Recognizer":
        """Load ``path`` with fairseq's checkpoint_utils. ``data``: the data directory with dict.txt
        (default: the one the checkpoint was trained on); ``model_overrides``: e.g.
        ``{"cif_tail_threshold": 0.4}``; ``lm_path``, ``lm_weight``: shallow fusion as
        ``fairseq-generate --lm-path --lm-weight`` (an LM of other units: ``LmDictionaryError``);
        ``segmenter``: see :class:`SegmenterConfig`; ``input_level``, ``count_search``,
        ``ctc_weight``, ``inner_eos``: see ``__init__``."""
        from fairseq import checkpoint_utils

        import fairseq_hkd  # noqa: F401  (registers the task and model; compat shims for torch.load)

        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} not found")
        overrides = dict(model_overrides or {})
        if data is not None:
            overrides["data"] = data
        state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides)
        task_cfg = state["cfg"]["task"]
        data_dir = task_cfg.get("data", None)
        if getattr(task_cfg, "_name", None) != "cif_asr":
            raise ValueError(f"{path} was trained with task {task_cfg.get('_name')!r}, not cif_asr")
        dict_path = task_cfg.get("dict_path", None) or os.path.join(data_dir or "", "dict.txt")
        if not data_dir or not os.path.isdir(data_dir) or not os.path.isfile(dict_path):
            raise FileNotFoundError(
                f"{path} was trained on data directory {data_dir!r}, which is missing or has no {dict_path} here; "
                "pass --data DIR "
                "(a directory with the training dict.txt, and cmvn.npz if the model uses global CMVN)"
            )
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, state=state)
        task.note_checkpoint(state["cfg"])  # the CTC weight of checkpoints saved before 2026-12-03
        device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
        lm_model = None
        if lm_path:
            from fairseq_hkd.generation.lm_fusion import load_lm

            lm_model = load_lm(lm_path, task.units.dict_path, task.target_dictionary)
            if lm_weight == 0.0:
                logger.warning(f"--lm-path {lm_path} with --lm-weight 0: the language model is not used")
        return cls(models[0], task, beam=beam, device=device, lm_model=lm_model, lm_weight=lm_weight,
                   segmenter=segmenter, input_level=input_level, input_level_tolerance_db=input_level_tolerance_db,
                   count_search=count_search, ctc_weight=ctc_weight, inner_eos=inner_eos)

    # ------------------------------------------------------------------ features
    def features(self, wav: np.ndarray) -> np.ndarray:
        """Mono 16 kHz float32 [n] -> normalised fbank [T, 80], as the task computes it, with the
        speech level matched to ``level_target`` first (None: as recorded)."""
        from fairseq_hkd.data.fbank import fbank
        from fairseq_hkd.data.level import match_level

        feats = match_level(fbank(wav), self.level_target, self.level_tolerance_db)[0]
        return np.ascontiguousarray(self.cmvn(feats), dtype=np.float32)

    @property
    def min_samples(self) -> int:
        """The shortest audio the model accepts (``--min-source-frames`` fbank frames), in samples."""
        from fairseq_hkd.data.fbank import FRAME_LENGTH_MS, FRAME_SHIFT_MS

        frames = int(self.task.cfg.min_source_frames)
        return int((FRAME_LENGTH_MS + (frames - 1) * FRAME_SHIFT_MS) * 16)

    def vad(self):
        """The Silero VAD (loaded on the first file longer than ``segmenter.max_segment_s``)."""
        if self._vad is None:
            from fairseq_hkd.generation.vad import SileroVad

            self._vad = SileroVad()
        return self._vad

    # ------------------------------------------------------------------ decoding
    def transcribe(self, items: Iterable[Union[str, AudioItem]], batch_size: int = 8, timestamps: bool = False,
                   plot_dir: Optional[str] = None, progress: bool = False) -> List[Transcript]:
        """Transcribe files (paths or AudioItems); results in input order. Raises ``AudioError`` for
        the first file that cannot be transcribed (:meth:`iter_transcribe` yields it instead)."""
        out = []
        for r in self.iter_transcribe(items, batch_size, timestamps, plot_dir, progress):
            if not r.ok:
                raise AudioError(r.line())
            out.append(r)
        return out

    def iter_transcribe(self, items: Iterable[Union[str, AudioItem]], batch_size: int = 8, timestamps: bool = False,
                        plot_dir: Optional[str] = None, progress: Union[bool, Progress] = False,
                        on_audio: Optional[callable] = None) -> Iterator[Union[Transcript, FileError]]:
        """Yield one :class:`Transcript` or :class:`FileError` (``.ok`` tells which) per file, in
        input order, as soon as each is done. ``items``: paths (files; a folder gives its audio files)
        or AudioItems. ``timestamps``: fill ``Transcript.token_times`` (segments always carry times).
        ``plot_dir``: one alignment PNG per file decoded whole. ``progress``: a tqdm bar (True) or the
        caller's :class:`Progress`, which it keeps open. ``on_audio(seconds)`` after each batch."""
        todo: List[AudioItem] = []
        for it in items:
            todo += [it] if isinstance(it, AudioItem) else collect_inputs([it])
        bar = progress if isinstance(progress, Progress) else (Progress(todo) if progress else None)
        cfg = PipelineConfig(batch_size=batch_size, min_samples=self.min_samples, segmenter=self.segmenter,
                             strict_sample_rate=self.task.cfg.strict_sample_rate,
                             multichannel=self.task.cfg.multichannel)

        def audio_done(seconds: float) -> None:
            if bar is not None:
                bar.update(seconds)
            if on_audio is not None:
                on_audio(seconds)

        pipeline = TranscriptionPipeline(lambda its, pieces: self.decode_pieces(its, pieces, plot_dir), self.vad,
                                         cfg, progress=audio_done)
        try:
            for r in pipeline.run(todo):
                if r.ok:
                    r.reference = None if r.reference is None else self.task.units.normalise(r.reference)
                    if not timestamps:
                        r.token_times = None
                if bar is not None:
                    bar.done(r.ok, r.duration if r.ok else 0.0)
                yield r
        finally:
            if bar is not None and bar is not progress:
                bar.close()

    @torch.no_grad()
    def decode_pieces(self, items: Sequence[AudioItem], pieces: Sequence[Piece],
                      plot_dir: Optional[str] = None) -> List[PieceResult]:
        """One batch: waveforms [n_b] -> fbank [T_b, 80] -> padded [B, T, 80] -> beam search."""
        feats = [torch.from_numpy(self.features(p.wav)) for p in pieces]
        lengths = torch.tensor([f.size(0) for f in feats], dtype=torch.long)
        src = feats[0].new_zeros(len(feats), int(lengths.max()), feats[0].size(1))
        for b, f in enumerate(feats):
            src[b, : f.size(0)] = f
        dec = self.generator.decode(src.to(self.device), lengths.to(self.device))
        alpha, enc_len = dec.alpha.float().cpu(), dec.encoder_lengths.cpu()
        strip = {self.tgt_dict.eos(), self.tgt_dict.bos(), self.tgt_dict.pad()}
        units = self.task.units
        out = []
        for b, (item, piece) in enumerate(zip(items, pieces)):
            hyp = dec.hypos[b][0]
            tokens = hyp["tokens"].tolist()
            keep = [k for k, t in enumerate(tokens) if t not in strip]  # inner </s> (sentence boundaries) out
            symbols = [self.tgt_dict[tokens[k]] for k in keep]
            scores = hyp["positional_scores"].float()
            duration = piece.wav.shape[0] / 16000
            fires = hyp["fires"]  # [L_b] the frame of each CIF token; token k fired at fires[k]
            r = PieceResult(
                text=units.decode(symbols), symbols=symbols,
                token_times=self.fire_times(fires[torch.tensor(keep, dtype=torch.long)], duration),
                token_scores=[float(scores[k]) for k in keep], score=float(hyp["score"]), n_fires=int(dec.cif_lengths[b]),
                words=[(units.decode(symbols[a:e]), a, e) for a, e in word_spans(symbols, units.unit)],
                token_spans=emitted_token_spans(alpha[b, : enc_len[b]].numpy(), len(fires), keep, self.downsample,
                                                duration))
            if plot_dir is not None and piece.whole:
                from fairseq_hkd.generation.plot import plot_alignment

                r.plot = plot_alignment(
                    os.path.join(plot_dir, _safe_name(item.utt_id) + ".png"), feats[b].numpy(), alpha[b, : enc_len[b]],
                    fires, [self.tgt_dict[t] for t in tokens[: len(fires)]], self.downsample,
                    title=f"{item.utt_id}: {r.text}")
            out.append(r)
        return out

    def fire_times(self, fires: torch.Tensor, duration: float) -> List[float]:
        """Encoder frame indices -> seconds (frame centres, clipped to [0, duration])."""
        from fairseq_hkd.generation.plot import encoder_frame_centres

        return [min(max(float(x), 0.0), duration) for x in encoder_frame_centres(fires.numpy(), self.downsample)]

    # ------------------------------------------------------------------ streaming (issue 17)
    def stream(self, chunk_ms: float = 640.0, left_chunks: Optional[int] = None, sample_rate: int = 16000):
        """A live stream over this model: ``accept(samples)`` -> newly fixed text, ``partial()``,
        ``finish()`` -> the result (generation/streaming.py). ``chunk_ms``: the encoder chunk
        (``float("inf")``: one chunk, the offline decoding); search settings are this recognizer's."""
        from fairseq_hkd.generation.streaming import StreamingRecognizer

        return StreamingRecognizer(self.model, self.generator, self.task.units, self.cmvn, chunk_ms, left_chunks,
                                   sample_rate, cmvn_kind=self.task.cfg.cmvn)


def _safe_name(utt_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in utt_id)


def error_rates(results: Sequence[Transcript]) -> Optional[dict]:
    """WER / CER (%) of results that have a reference (editdistance over words / characters; as in
    fairseq's ``--wer-char-level`` a space between words counts as a character)."""
    import editdistance

    pairs = [(r.reference, r.text) for r in results if r.reference is not None]
    if not pairs:
        return None
    w_err = sum(editdistance.eval(ref.split(), hyp.split()) for ref, hyp in pairs)
    w_n = sum(len(ref.split()) for ref, _ in pairs)
    c_err = sum(editdistance.eval(list(" ".join(ref.split())), list(" ".join(hyp.split()))) for ref, hyp in pairs)
    c_n = sum(len(" ".join(ref.split())) for ref, _ in pairs)
    return {"wer": 100.0 * w_err / max(w_n, 1), "cer": 100.0 * c_err / max(c_n, 1), "utterances": len(pairs)}


def read_inputs(audio: Sequence[str], manifest: Optional[str], list_file: Optional[str] = None) -> List[AudioItem]:
    """Manifest entries, then files / folders / ``-`` (stdin), then ``--list`` paths (inputs.py)."""
    return collect_inputs(audio, manifest, list_file)


def build_parser(require_plot: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-hkd-plot" if require_plot else "fairseq-hkd-transcribe",
        description="Transcribe audio files, folders, lists or a manifest with a CIF checkpoint"
        + (" and draw alignment plots" if require_plot else ""),
    )
    p.add_argument("audio", nargs="*", help="audio files (anything libsndfile reads) or folders (searched "
                                             "recursively); - reads a list of paths from stdin")
    p.add_argument("--path", required=True, help="checkpoint (.pt)")
    if not require_plot:  # handled by the console script before this module (and torch) is imported
        p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                       help="onnx: decode an exported model directory (fairseq-hkd-export) with onnxruntime, "
                            "without torch or fairseq; its options: fairseq-hkd-transcribe --backend onnx --help")
    p.add_argument("--manifest", help="a manifest TSV (id, audio, n_samples, tgt_text); its transcripts are scored")
    p.add_argument("--list", metavar="FILE", help="a text file of audio paths or folders, one a line (- : stdin)")
    p.add_argument("--data", help="data directory with dict.txt (default: the checkpoint's)")
    p.add_argument("--beam", type=int, default=10, help="beam size (1 = greedy)")
    p.add_argument("--lm-path", help="language model checkpoint for shallow fusion (fairseq transformer_lm on the "
                                     "ASR units, examples/*/lm.sh)")
    p.add_argument("--lm-weight", type=float, default=0.0,
                   help="weight W of the LM log-probabilities, as fairseq-generate's (0: no LM)")
    add_count_args(p, "the checkpoint's --cif-count-search and --cif-ctc-weight, 1 and 0.7")
    p.add_argument("--batch-size", type=int, default=8, help="files or segments per decoding batch")
    add_output_args(p)
    p.add_argument("--plot", metavar="DIR", required=require_plot,
                   help="write one alignment PNG per file decoded whole to DIR")
    p.add_argument("--max-files", type=int, help="only the first N inputs")
    add_segmenter_args(p)
    add_level_arg(p)
    p.add_argument("--model-overrides", default="{}", help='JSON, e.g. \'{"cif_tail_threshold": 0.4}\'')
    p.add_argument("--cpu", action="store_true", help="decode on CPU even when CUDA is available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if not require_plot:  # handled before parsing, by cli_main
        p.add_argument("--streaming", action="store_true",
                       help="simulate live streaming over the files (--chunk-ms, --piece-ms; --streaming --help)")
    return p


def setup_logging() -> None:
    """INFO to stderr in our format. Importing fairseq_hkd (fairseq's models) already ran
    ``logging.basicConfig(level=DEBUG)``: root goes back to INFO, its plain stream handlers get our
    format (other handlers, e.g. pytest's, are left alone), matplotlib/PIL are held at WARNING."""
    from fairseq_hkd.generation.plot import quiet_plot_loggers

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for h in root.handlers:
        if type(h) is logging.StreamHandler:
            h.setFormatter(logging.Formatter(LOG_FORMAT))
    root.setLevel(logging.INFO)
    quiet_plot_loggers()


def cli_main(argv: Optional[Sequence[str]] = None, require_plot: bool = False) -> None:
    """Exit status 0, or 1 when some file failed (each named on an ERROR line); usage mistakes
    exit with one line (SystemExit), programming errors raise with their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--streaming" in argv and not require_plot:  # simulated live streaming (issue 17): stream_cli.py
        from fairseq_hkd.generation.stream_cli import main as streaming_main

        return streaming_main([a for a in argv if a != "--streaming"])
    args = build_parser(require_plot).parse_args(argv)
    setup_logging()
    try:
        items = read_inputs(args.audio, args.manifest, args.list)
    except (InputError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"fairseq-hkd-transcribe: {e}")
    if args.max_files:
        items = items[: args.max_files]
    if not items:
        raise SystemExit("nothing to transcribe: give audio files or folders, --list or --manifest")
    if args.format in SUBTITLES and not args.output_dir and len(items) > 1:
        raise SystemExit(f"--format {args.format} writes one file per input: add --output-dir DIR "
                         f"({len(items)} inputs)")
    try:
        overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--model-overrides must be JSON ({e}): {args.model_overrides!r}")
    segmenter = segmenter_from_args(args)
    level_from_args(args)
    rec = Recognizer.from_checkpoint(args.path, data=args.data, beam=args.beam, cpu=args.cpu,
                                     model_overrides=overrides, lm_path=args.lm_path, lm_weight=args.lm_weight,
                                     segmenter=segmenter, input_level=args.input_level,
                                     input_level_tolerance_db=args.input_level_tolerance,
                                     count_search=args.count_search, ctc_weight=args.ctc_weight,
                                     inner_eos=args.inner_eos)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    writer = OutputWriter(args.format, args.output_dir, out, timestamps=args.timestamps)
    stats = Progress(items, enabled=not args.quiet)
    results = []
    try:
        for r in rec.iter_transcribe(items, args.batch_size, args.timestamps, args.plot, progress=stats):
            if r.ok:
                writer.write(r)
                results.append(r)
            else:
                with stats.paused():
                    logger.error(r.line())
    finally:
        stats.close()
        if args.output:
            out.close()
    summary = f"{stats.summary()}, beam {args.beam}, {rec.device}"
    if args.lm_path:
        summary += f", LM {args.lm_path} weight {args.lm_weight}"
    rates = error_rates(results)
    if rates:
        summary += f"; WER {rates['wer']:.2f}% CER {rates['cer']:.2f}% over {rates['utterances']} references"
    if args.plot:
        summary += f"; plots in {args.plot}"
    if args.output_dir:
        summary += f"; {args.format} files in {args.output_dir}"
    logger.info(f"{summary}; {stats.failures()}")
    if stats.failed:
        logger.error(f"{stats.failures()} (see the ERROR lines above)")
        raise SystemExit(1)


if __name__ == "__main__":
    cli_main()
