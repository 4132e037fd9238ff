"""Streaming recognition on a test set: WER per chunk size next to full context, token emission
latency, compute per piece and real-time factor (issue 17, item 5).

Usage:
    # train the streaming model first (~30 min on 2 CPU cores; conf/tiny_stream.sh: causal conv,
    # U2 dynamic chunks up to 1280 ms) -- the full-context baseline is the demo's exp/synth/cif
    examples/synth/train.sh --exp exp/synth/stream --criterion cif --conf tiny_stream
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_streaming.py \\
        --path exp/synth/stream/checkpoint_best.pt --baseline exp/synth/cif/checkpoint_best.pt \\
        --manifest data/synth/test.tsv --chunks 320,640,1280 --beam 1 --output results/streaming-test.md

Every utterance is streamed in ``--piece-ms`` pieces (100 ms) through ``Recognizer.stream()``, once
per chunk size, and decoded with full context (chunk 0: one chunk, i.e. exactly the offline
decoding). Emission latency of a token: stream position when ``accept`` returned it minus the end of
the encoder frame that fired it (audio time: compute delay excluded; it is reported separately as the
compute per piece). Real-time factor: total compute / audio duration. ``--baseline``: a full-context
model decoded offline on the same utterances (the WER to stay within 10 % relative of at 640 ms),
with the raw CIF count as the stream counts (``--baseline-count-search -1``, the default; 1 = the offline
decoding's default count search, which a stream cannot do: it fixes tokens as they fire).
Writes a markdown table to ``--output`` (and stdout).
"""
import argparse
import os
import sys
import time

import numpy as np


def run(rec, items, chunk_ms, piece_ms, left_chunks):
    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.generation.stream_cli import stream_file

    results, compute, latency, audio_s = [], [], [], 0.0
    for it in items:
        wav = read_audio(it.audio, it.utt_id)
        res, c, lat = stream_file(rec, wav, chunk_ms, piece_ms, left_chunks)
        res.reference = rec.task.units.normalise(it.reference)
        results.append(res)
        compute += c
        latency += lat
        audio_s += res.duration
    return results, np.asarray(compute), np.asarray(latency), audio_s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", required=True, help="the streaming (chunk-trained) checkpoint")
    p.add_argument("--baseline", help="a full-context checkpoint, decoded offline for comparison")
    p.add_argument("--manifest", required=True, help="test manifest with transcripts")
    p.add_argument("--chunks", default="320,640,1280", help="chunk sizes in ms (full context is always added)")
    p.add_argument("--piece-ms", type=float, default=100.0)
    p.add_argument("--left-chunks", type=int, help="cached left chunks (default: the model's)")
    p.add_argument("--baseline-count-search", type=int, default=-1,
                   help="the baseline's --count-search (-1: the raw count, like streaming; 1: the offline default)")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--max-utts", type=int, help="only the first N utterances")
    p.add_argument("--output", help="also write the table here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from fairseq_hkd.generation.inputs import collect_inputs
    from fairseq_hkd.generation.transcribe import Recognizer, error_rates

    items = collect_inputs([], args.manifest)
    items = items[: args.max_utts] if args.max_utts else items
    rows = []
    if args.baseline:
        # as recorded, like the streaming decoder (which does not match input levels)
        base = Recognizer.from_checkpoint(args.baseline, beam=args.beam, cpu=True, input_level="off",
                                          count_search=args.baseline_count_search)
        t0 = time.perf_counter()
        res = base.transcribe(items, batch_size=1)
        wall = time.perf_counter() - t0
        audio = sum(r.duration for r in res)
        count = "raw count" if args.baseline_count_search < 0 else f"count search {args.baseline_count_search}"
        rows.append((f"baseline (full-context model, offline, {count})", error_rates(res)["wer"], None, None,
                     wall / audio))
    rec = Recognizer.from_checkpoint(args.path, beam=args.beam, cpu=True)
    full_wer = None
    for chunk in [0.0] + [float(c) for c in args.chunks.split(",") if c]:
        results, compute, latency, audio_s = run(rec, items, chunk, args.piece_ms, args.left_chunks)
        wer = error_rates(results)["wer"]
        if chunk == 0:
            full_wer = wer
        name = "streaming model, full context" if chunk == 0 else f"streaming model, chunk {chunk:g} ms"
        rows.append((name, wer, latency, compute, compute.sum() / audio_s))
        print(f"{name}: WER {wer:.2f}", file=sys.stderr)

    lines = [f"Streaming on {args.manifest} ({len(items)} utterances, beam {args.beam}, pieces of "
             f"{args.piece_ms:g} ms, 1 thread)", "",
             "| system | WER % | vs full context | latency mean / p90 ms | compute per piece mean / p90 ms | RTF |",
             "|---|---|---|---|---|---|"]
    for name, wer, lat, comp, rtf in rows:
        rel = "" if full_wer in (None, 0) else f"{100 * (wer - full_wer) / full_wer:+.1f} %"
        lat_s = "" if lat is None or not len(lat) else f"{1000 * lat.mean():.0f} / {1000 * np.percentile(lat, 90):.0f}"
        comp_s = "" if comp is None else f"{1000 * comp.mean():.1f} / {1000 * np.percentile(comp, 90):.1f}"
        lines.append(f"| {name} | {wer:.2f} | {rel} | {lat_s} | {comp_s} | {rtf:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
