"""``fairseq-hkd-transcribe --backend onnx --model-dir DIR``: transcription without torch or fairseq.

Usage::

    fairseq-hkd-transcribe --backend onnx --model-dir exp/demo-final/hkd/onnx a.wav b.flac
    fairseq-hkd-transcribe --backend onnx --model-dir onnx-int8 --manifest data/synth/test.tsv \\
        --beam 5 --threads 2 --timestamps --output test.hyp.tsv

The console script ``fairseq-hkd-transcribe`` enters here (:func:`transcribe_main`): with
``--backend onnx`` it runs :func:`main` and never imports torch or fairseq; otherwise it hands the
arguments to the PyTorch transcriber (``fairseq_hkd/generation/transcribe.py``). Output: one line
per file, in input order, ``ID<TAB>TEXT`` (with ``--timestamps`` a third field of
``SYMBOL:SECONDS``), as the PyTorch backend writes; the summary (stderr) gives the real-time factor
and, with a manifest, WER/CER against its transcripts. A bad model directory, a missing audio file
or manifest is a one-line error (exit status 2).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import unicodedata
from typing import List, Optional, Sequence

__all__ = ["main", "transcribe_main", "build_parser"]

logger = logging.getLogger("fairseq_hkd.runtime")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-hkd-transcribe --backend onnx",
        description="Transcribe audio files with an exported model directory (onnxruntime; no torch)")
    p.add_argument("audio", nargs="*", help="audio files (wav, flac, anything libsndfile reads)")
    p.add_argument("--model-dir", required=True, help="a directory written by fairseq-hkd-export")
    p.add_argument("--manifest", help="a manifest TSV (id, audio, n_samples, tgt_text); its transcripts are scored")
    p.add_argument("--beam", type=int, default=10, help="beam size (1 = greedy)")
    p.add_argument("--eos-slack", type=int, choices=[0, 1], help="</s> may also end a hypothesis one step "
                                                                  "early (default: the task's, from the export)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--batch-size", type=int, default=8, help="files per decoding batch")
    p.add_argument("--timestamps", action="store_true", help="append SYMBOL:SECONDS for every emitted unit")
    p.add_argument("--max-files", type=int, help="only the first N inputs")
    p.add_argument("--output", help="write the lines to this file instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no per-batch progress on stderr")
    return p


def normalise_reference(text: str, units_cfg: dict) -> str:
    """A manifest transcript as the units see it, without the tokenizer (scoring only): wordpiece
    (an uncased BERT tokenizer's normaliser) lower-cases and strips accents; char / spm lower-case
    with ``lowercase``; spm also applies NFKC. For the demo's and LibriSpeech's transcripts this is
    ``Units.normalise``; exotic text may differ in details the PyTorch path gets from the tokenizer."""
    unit = units_cfg.get("unit", "char")
    if unit == "wordpiece":
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    elif units_cfg.get("lowercase"):
        text = text.lower()
    if unit == "spm":
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def _inputs(audio: Sequence[str], manifest: Optional[str]):
    """-> [(id, path, reference or None)]."""
    items = []
    if manifest:
        from fairseq_hkd.data.manifest import read_manifest

        items += [(e.id, e.audio, e.tgt_text) for e in read_manifest(manifest)]
    for path in audio:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"audio file {path} not found")
        items.append((os.path.splitext(os.path.basename(path))[0], path, None))
    return items


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
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stderr)
    from fairseq_hkd.data.audio import AudioError
    from fairseq_hkd.data.manifest import ManifestError
    from fairseq_hkd.runtime.model_dir import ModelDirError
    from fairseq_hkd.runtime.recognizer import OnnxRecognizer, describe

    try:
        items = _inputs(args.audio, args.manifest)
        rec = OnnxRecognizer(args.model_dir, beam=args.beam, threads=args.threads, eos_slack=args.eos_slack)
    except (ModelDirError, FileNotFoundError, ManifestError, ValueError) as e:
        raise SystemExit(f"fairseq-hkd-transcribe: error: {e}")
    if not items:
        raise SystemExit("fairseq-hkd-transcribe: error: nothing to transcribe: give audio files and/or --manifest")
    items = items[: args.max_files] if args.max_files else items
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    t0, audio_s, pairs, failed = time.perf_counter(), 0.0, [], 0
    try:
        for start in range(0, len(items), args.batch_size * 16):  # read and length-sort 16 batches at a time
            chunk, feats, durations = [], [], []
            for utt_id, path, ref in items[start : start + args.batch_size * 16]:
                try:
                    f, d = rec.frontend.read(path, where=utt_id)
                except AudioError as e:
                    print(f"ERROR\t{utt_id}\t{e}", file=out, flush=True)
                    failed += 1
                    continue
                chunk.append((utt_id, path, ref))
                feats.append(f)
                durations.append(d)
            for (utt_id, _, ref), dec, dur in zip(chunk, rec._decode_sorted(feats, args.batch_size), durations):
                fields = [utt_id, dec.text]
                if args.timestamps:
                    fields.append(" ".join(f"{s}:{t:.2f}" for s, t in zip(dec.symbols, rec.token_times(dec, dur))))
                print("\t".join(fields), file=out, flush=True)
                audio_s += dur
                if ref is not None:
                    pairs.append((normalise_reference(ref, rec.model_dir.config["units"]), dec.text))
            if not args.quiet:
                logger.info(f"{min(start + args.batch_size * 16, len(items))}/{len(items)} files")
    finally:
        if args.output:
            out.close()
    elapsed = time.perf_counter() - t0
    summary = (f"transcribed {len(items) - failed} files ({audio_s:.1f} s of audio) in {elapsed:.1f} s, "
               f"real-time factor {elapsed / max(audio_s, 1e-9):.3f}, onnxruntime {describe(rec)}, "
               f"{args.threads} thread(s)")
    rates = error_rates(pairs)
    if rates:
        summary += f"; WER {rates['wer']:.2f}% CER {rates['cer']:.2f}% over {len(pairs)} references"
    if failed:
        summary += f"; {failed} file(s) failed"
    logger.info(summary)
    if failed:
        raise SystemExit(1)


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
