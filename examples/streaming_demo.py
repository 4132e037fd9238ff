#!/usr/bin/env python
"""Streaming recognition of a WAV file read in 100 ms pieces, as a microphone would deliver it.

Usage:
    .venv/bin/python examples/streaming_demo.py --path exp/synth/stream/checkpoint_best.pt \\
        data/synth/audio/test/0001.wav [--chunk-ms 640] [--beam 1] [--realtime]

Prints each piece of text as it is fixed (with the stream position), the best hypothesis so far
when it changes (dimmed, on stderr), and the final transcript. See fairseq_hkd/generation/streaming.py;
``fairseq-hkd-transcribe --streaming`` does the same over many files with timing statistics.
"""
import argparse
import sys
import time

import numpy as np
import soundfile as sf


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("wav", help="a 16 kHz WAV file (mono or the first channel)")
    p.add_argument("--path", required=True, help="checkpoint (.pt)")
    p.add_argument("--chunk-ms", type=float, default=640.0, help="encoder chunk")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--realtime", action="store_true", help="wait 100 ms between pieces")
    args = p.parse_args()

    from fairseq_hkd.generation.transcribe import Recognizer

    rec = Recognizer.from_checkpoint(args.path, beam=args.beam, cpu=True)
    stream = rec.stream(chunk_ms=args.chunk_ms)
    with sf.SoundFile(args.wav) as f:
        if f.samplerate != 16000:
            sys.exit(f"{args.wav}: {f.samplerate} Hz; the model takes 16 kHz (resample it first)")
        piece = f.samplerate // 10  # 100 ms
        position, last = 0, ""
        for block in f.blocks(blocksize=piece, dtype="float32", always_2d=True):
            position += len(block)
            text = stream.accept(np.ascontiguousarray(block[:, 0]))
            if text:
                print(f"[{position / 16000:6.2f} s] {text}", flush=True)
            partial = stream.partial()
            if partial != last:
                print(f"\033[2m[{position / 16000:6.2f} s] ... {partial}\033[0m", file=sys.stderr, flush=True)
                last = partial
            if args.realtime:
                time.sleep(0.1)
    result = stream.finish()
    print(f"[{result.duration:6.2f} s] final: {result.text}")


if __name__ == "__main__":
    main()
