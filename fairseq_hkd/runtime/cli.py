"""``fairseq-hkd-transcribe --backend onnx --model-dir DIR``: transcription without torch or fairseq.

Usage::

    fairseq-hkd-transcribe --backend onnx --model-dir exp/demo-final/hkd/onnx a.wav b.flac
    fairseq-hkd-transcribe --backend onnx --model-dir onnx-int8 --manifest data/synth/test.tsv \\
        --beam 5 --threads 2 --timestamps --output test.hyp.tsv

The console script ``fairseq-hkd-transcribe`` enters here (:func:`transcribe_main`): with
``--backend onnx`` it runs :func:`main` and never imports torch or fairseq; otherwise it hands the
arguments to the PyTorch transcriber (``fairseq_hkd/generation/transcribe.py``). Both backends share
the torch-free transcription modules of ``fairseq_hkd/generation/`` (inputs: files, folders,
``--list``, ``--manifest``; the pipeline with failure isolation; ``--format tsv|text|json|srt|vtt``;
progress and summary), so the options and outputs are the same, except: no ``--path``, ``--data``,
``--lm-path``, ``--plot``, ``--model-overrides`` (the tail threshold is the export's). Files longer
than ``--max-segment`` are split at pauses by Silero VAD on onnxruntime (``runtime/vad.py``). A bad
model directory is a one-line error naming the file.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional, Sequence

__all__ = ["main", "transcribe_main", "build_parser"]

logger = logging.getLogger("fairseq_hkd.runtime")


def build_parser() -> argparse.ArgumentParser:
    from fairseq_hkd.generation.cli_options import add_count_args, add_level_arg, add_output_args, add_segmenter_args

    p = argparse.ArgumentParser(
        prog="fairseq-hkd-transcribe --backend onnx",
        description="Transcribe audio files, folders, lists or a manifest with an exported model directory "
                    "(onnxruntime; neither torch nor fairseq)")
    p.add_argument("audio", nargs="*", help="audio files (anything libsndfile reads) or folders (searched "
                                             "recursively); - reads a list of paths from stdin")
    p.add_argument("--model-dir", required=True, help="a directory written by fairseq-hkd-export")
    p.add_argument("--manifest", help="a manifest TSV (id, audio, n_samples, tgt_text); its transcripts are scored")
    p.add_argument("--list", metavar="FILE", help="a text file of audio paths or folders, one a line (- : stdin)")
    p.add_argument("--beam", type=int, default=10, help="beam size (1 = greedy)")
    p.add_argument("--eos-slack", type=int, choices=[0, 1],
                   help="</s> may also end a hypothesis one step early (default: the task's, recorded at export)")
    add_count_args(p, "recorded at export; -1 for exports before 2026-12-03")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--batch-size", type=int, default=8, help="files or segments per decoding batch")
    add_output_args(p)
    p.add_argument("--max-files", type=int, help="only the first N inputs")
    add_segmenter_args(p, ' on onnxruntime')
    add_level_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def error_rates(pairs) -> Optional[dict]:
    """(reference, hypothesis) pairs -> WER / CER in % (``generation/transcribe.error_rates``)."""
    try:
        from editdistance import eval as distance
    except ImportError:  # not a runtime dependency: a plain Levenshtein distance
        distance = _levenshtein
    if not pairs:
        return None
    w_err = sum(distance(r.split(), h.split()) for r, h in pairs)
    c_err = sum(distance(list(" ".join(r.split())), list(" ".join(h.split()))) for r, h in pairs)
    return {"wer": 100.0 * w_err / max(sum(len(r.split()) for r, _ in pairs), 1),
            "cer": 100.0 * c_err / max(sum(len(" ".join(r.split())) for r, _ in pairs), 1)}


def _levenshtein(a: Sequence, b: Sequence) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Exit status 0, or 1 when some file failed (each named on an ERROR line); a bad model
    directory or usage mistake is one line (SystemExit 2-style message)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stderr)
    from fairseq_hkd.generation.formats import SUBTITLES, OutputWriter
    from fairseq_hkd.generation.inputs import InputError, collect_inputs
    from fairseq_hkd.generation.progress import Progress
    from fairseq_hkd.generation.cli_options import level_from_args, segmenter_from_args
    from fairseq_hkd.runtime.model_dir import ModelDirError
    from fairseq_hkd.runtime.recognizer import OnnxRecognizer, describe

    try:
        items = collect_inputs(args.audio, args.manifest, args.list)
    except (InputError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"fairseq-hkd-transcribe: {e}")
    items = items[: args.max_files] if args.max_files else items
    if not items:
        raise SystemExit("nothing to transcribe: give audio files or folders, --list or --manifest")
    if args.format in SUBTITLES and not args.output_dir and len(items) > 1:
        raise SystemExit(f"--format {args.format} writes one file per input: add --output-dir DIR ({len(items)} inputs)")
    segmenter = segmenter_from_args(args)
    try:
        rec = OnnxRecognizer(args.model_dir, beam=args.beam, threads=args.threads, eos_slack=args.eos_slack,
                             input_level=level_from_args(args), input_level_tolerance_db=args.input_level_tolerance,
                             count_search=args.count_search, ctc_weight=args.ctc_weight,
                             inner_eos=None if args.inner_eos == "auto" else args.inner_eos == "yes")
    except (ModelDirError, ValueError) as e:
        raise SystemExit(f"fairseq-hkd-transcribe: error: {e}")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    writer = OutputWriter(args.format, args.output_dir, out, timestamps=args.timestamps)
    stats = Progress(items, enabled=not args.quiet and _importable("tqdm"))
    pairs = []
    try:
        for r in rec.iter_transcribe(items, args.batch_size, args.timestamps, segmenter, on_audio=stats.update):
            stats.done(r.ok, r.duration if r.ok else 0.0)
            if r.ok:
                writer.write(r)
                if r.reference is not None:
                    pairs.append((r.reference, r.text))
            else:
                with stats.paused():
                    logger.error(r.line())
    finally:
        stats.close()
        if args.output:
            out.close()
    summary = f"{stats.summary()}, onnxruntime {describe(rec)}, {args.threads} thread(s)"
    rates = error_rates(pairs)
    if rates:
        summary += f"; WER {rates['wer']:.2f}% CER {rates['cer']:.2f}% over {len(pairs)} references"
    if args.output_dir:
        summary += f"; {args.format} files in {args.output_dir}"
    logger.info(f"{summary}; {stats.failures()}")
    if stats.failed:
        logger.error(f"{stats.failures()} (see the ERROR lines above)")
        raise SystemExit(1)


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _backend(argv: List[str]) -> str:
    """The value of ``--backend`` in argv (default torch), without parsing anything else."""
    for i, a in enumerate(argv):
        if a == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--backend="):
            return a.split("=", 1)[1]
    return "torch"


def _without_backend(argv: List[str]) -> List[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--backend":
            skip = True
            continue
        if a.startswith("--backend="):
            continue
        out.append(a)
    return out


def transcribe_main(argv: Optional[Sequence[str]] = None) -> None:
    """The ``fairseq-hkd-transcribe`` console script: ``--backend onnx`` -> :func:`main` (torch-free);
    ``--backend torch`` (default) -> ``fairseq_hkd.generation.transcribe.cli_main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = _backend(argv)
    if backend == "onnx":
        return main(_without_backend(argv))
    if backend != "torch":
        raise SystemExit(f"fairseq-hkd-transcribe: error: --backend {backend!r}: choose torch or onnx")
    from fairseq_hkd.generation.transcribe import cli_main

    return cli_main(_without_backend(argv))


if __name__ == "__main__":
    main()
