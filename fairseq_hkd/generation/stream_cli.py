"""``fairseq-hkd-transcribe --streaming``: files fed to a stream piece by piece, as if recorded live.

Usage::

    fairseq-hkd-transcribe --streaming --chunk-ms 640 --path exp/stream/checkpoint_best.pt a.wav b.flac
    fairseq-hkd-transcribe --streaming --chunk-ms 320 --piece-ms 100 --realtime --path ckpt.pt talk.wav
    fairseq-hkd-transcribe --streaming --chunk-ms 640 --path ckpt.pt --manifest data/synth/test.tsv --quiet

Each file is read whole (16 kHz mono, as the offline transcriber reads it) and handed to
``Recognizer.stream()`` in ``--piece-ms`` pieces (100 ms). Output lines, tab-separated:

    ID  SECONDS  fixed    TEXT     text fixed by the piece that ended at SECONDS of audio (a word's
                                   leading space included)
    ID  SECONDS  partial  TEXT     the whole hypothesis so far, when it changed (not with --quiet)
    ID  SECONDS  final    TEXT     the transcript, at the end of the file

``--realtime`` sleeps so that pieces arrive at the audio's pace (a live source); without it the file
is processed as fast as possible and SECONDS is the simulated time. The summary on stderr gives the
real-time factor, the compute time per piece (mean, p90, max), and the emission latency of tokens
(time from the end of the encoder frame that fired a token to the end of the piece whose ``accept``
returned it, mean and p90), plus WER/CER with ``--manifest``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

logger = logging.getLogger("fairseq_hkd.generation.transcribe")

__all__ = ["main", "build_parser", "stream_file", "latency_stats"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseq-hkd-transcribe --streaming",
                                description="Simulate live streaming recognition over audio files")
    p.add_argument("audio", nargs="*", help="audio files or folders; - reads a list of paths from stdin")
    p.add_argument("--path", required=True, help="checkpoint (.pt)")
    p.add_argument("--manifest", help="a manifest TSV; its transcripts are scored")
    p.add_argument("--list", metavar="FILE", help="a text file of audio paths, one a line (- : stdin)")
    p.add_argument("--data", help="data directory with dict.txt (default: the checkpoint's)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--chunk-ms", type=float, default=640.0,
                   help="encoder chunk in ms (a multiple of the encoder frame; 0: one chunk, i.e. offline)")
    p.add_argument("--left-chunks", type=int, help="chunks of cached left context (default: the model's)")
    p.add_argument("--piece-ms", type=float, default=100.0, help="audio handed to accept() at a time")
    p.add_argument("--realtime", action="store_true", help="feed pieces at the audio's pace")
    p.add_argument("--max-files", type=int, help="only the first N inputs")
    p.add_argument("--model-overrides", default="{}", help='JSON, e.g. \'{"cif_tail_threshold": 0.4}\'')
    p.add_argument("--cpu", action="store_true", help="decode on CPU even when CUDA is available")
    p.add_argument("--quiet", action="store_true", help="no partial lines")
    return p


def stream_file(rec, wav: np.ndarray, chunk_ms: float, piece_ms: float = 100.0, left_chunks: Optional[int] = None,
                realtime: bool = False, on_event=None):
    """Stream one waveform; -> (StreamResult, per-piece compute seconds, per-token latency seconds).

    ``on_event(seconds, kind, text)`` is called for "fixed" and "partial" events. Latency of a token:
    (stream position when its text was fixed) - (end of its fire frame), in seconds of audio.
    """
    stream = rec.stream(chunk_ms=chunk_ms if chunk_ms > 0 else float("inf"), left_chunks=left_chunks)
    piece = max(1, int(round(piece_ms * 16)))
    compute: List[float] = []
    last_partial = ""
    start = time.perf_counter()
    for i in range(0, len(wav), piece):
        x = wav[i:i + piece]
        if realtime:  # wait until this piece would have been recorded
            delay = (i + len(x)) / 16000 - (time.perf_counter() - start)
            if delay > 0:
                time.sleep(delay)
        t0 = time.perf_counter()
        fixed = stream.accept(x)
        partial = stream.partial()
        compute.append(time.perf_counter() - t0)
        now = (i + len(x)) / 16000
        if on_event is not None:
            if fixed:
                on_event(now, "fixed", fixed)
            if partial != last_partial:
                on_event(now, "partial", partial)
        last_partial = partial
    t0 = time.perf_counter()
    res = stream.finish()
    compute.append(time.perf_counter() - t0)
    frame_s = rec.downsample * 0.01
    fire_ends = [(f + 1) * frame_s + 0.015 for f in stream.fires[: len(res.symbols)]]  # + the 25 ms window's tail
    latency = [max(e - min(fe, res.duration), 0.0) for e, fe in zip(res.emitted_at, fire_ends)]
    return res, compute, latency


def latency_stats(values: Sequence[float]) -> str:
    if not len(values):
        return "n/a"
    v = np.asarray(values) * 1000
    return f"mean {v.mean():.0f} ms, p90 {np.percentile(v, 90):.0f} ms"


def main(argv: Optional[Sequence[str]] = None) -> None:
    from fairseq_hkd.data.audio import AudioError, read_audio
    from fairseq_hkd.generation.inputs import InputError, collect_inputs
    from fairseq_hkd.generation.streaming import chunk_frames
    from fairseq_hkd.generation.transcribe import Recognizer, error_rates, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        items = collect_inputs(args.audio, args.manifest, args.list)
    except (InputError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"fairseq-hkd-transcribe --streaming: {e}")
    items = items[: args.max_files] if args.max_files else items
    if not items:
        raise SystemExit("nothing to transcribe: give audio files or folders, --list or --manifest")
    try:
        overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--model-overrides must be JSON ({e}): {args.model_overrides!r}")
    rec = Recognizer.from_checkpoint(args.path, data=args.data, beam=args.beam, cpu=args.cpu, model_overrides=overrides)
    try:
        if args.chunk_ms > 0:
            chunk_frames(args.chunk_ms, rec.downsample)
        if args.piece_ms <= 0:
            raise ValueError(f"--piece-ms must be > 0, got {args.piece_ms:g}")
    except ValueError as e:
        raise SystemExit(f"fairseq-hkd-transcribe --streaming: {e}")
    out = sys.stdout
    compute, latency, audio_s, failed, results = [], [], 0.0, 0, []
    wall = time.perf_counter()
    for it in items:
        def event(t, kind, text, utt=it.utt_id):
            if kind == "fixed" or not args.quiet:
                out.write(f"{utt}\t{t:.2f}\t{kind}\t{text}\n")
                out.flush()

        try:
            wav = read_audio(it.audio, it.utt_id)
            res, c, lat = stream_file(rec, wav, args.chunk_ms, args.piece_ms, args.left_chunks, args.realtime, event)
        except (AudioError, ValueError, OSError) as e:
            logger.error(f"ERROR {it.utt_id}: {e}")
            failed += 1
            continue
        out.write(f"{it.utt_id}\t{res.duration:.2f}\tfinal\t{res.text}\n")
        out.flush()
        compute += c
        latency += lat
        audio_s += res.duration
        res.reference = None if it.reference is None else rec.task.units.normalise(it.reference)
        results.append(res)
    busy = float(np.sum(compute)) if compute else 0.0
    c_ms = np.asarray(compute) * 1000 if compute else np.zeros(1)
    summary = (f"streamed {len(results)} files, {audio_s:.1f} s of audio, chunk {args.chunk_ms:g} ms, beam {args.beam}, "
               f"{rec.device}; real-time factor {busy / max(audio_s, 1e-9):.3f} (compute only; wall "
               f"{time.perf_counter() - wall:.1f} s); per piece: mean {c_ms.mean():.1f} ms, p90 "
               f"{np.percentile(c_ms, 90):.1f} ms, max {c_ms.max():.1f} ms; token emission latency {latency_stats(latency)}")
    rates = error_rates(results)
    if rates:
        summary += f"; WER {rates['wer']:.2f}% CER {rates['cer']:.2f}% over {rates['utterances']} references"
    logger.info(summary)
    if failed:
        logger.error(f"{failed} file(s) failed (see the ERROR lines above)")
        raise SystemExit(1)
