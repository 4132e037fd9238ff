"""WER against the silence around a short recording: the manifest's utterances with extra silence at
both edges, transcribed whole with ``--trim-files`` (the silence beyond the edge pads cut,
``segments.trim_to_speech``) and without (decoded as recorded, as ``fairseq-generate`` would; the default).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_file_edges.py \\
        --ckpt exp/wide/cif-s1/checkpoint_best.pt --manifest data/synth6k-wide/heldout.tsv --pads 0 0.2 0.5 1.0

For each ``--pads`` S (seconds) every utterance gets S seconds of silence before and after it: digital
zeros, and (``--noise-dbfs``) white noise at that level over the whole file (a quiet room), written as
16-bit wavs; all files of one condition are transcribed with the Recognizer (``--input-level off``, beam
``--beam``, model loaded once per setting) and scored against the manifest's transcripts. Prints one
JSON line per (edges, condition) and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_padded(manifest: str, pad_s: float, noise_dbfs, out_dir: Path, seed: int = 0):
    """The manifest's utterances with ``pad_s`` of silence at both edges (and noise), as 16-bit wavs."""
    import soundfile as sf

    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.inputs import AudioItem

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for e in read_manifest(manifest):
        z = np.zeros(int(round(pad_s * 16000)), np.float32)
        wav = np.concatenate([z, read_audio(e.audio), z])
        if noise_dbfs is not None:
            wav = wav + rng.normal(0, 10.0 ** (noise_dbfs / 20.0), wav.shape[0]).astype(np.float32)
        path = out_dir / f"{e.id}.wav"
        sf.write(path, np.clip(wav, -1, 1), 16000, subtype="PCM_16")
        items.append(AudioItem(e.id, str(path), e.tgt_text))
    return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--pads", type=float, nargs="+", default=[0.0, 0.2, 0.5, 1.0])
    p.add_argument("--noise-dbfs", type=float, nargs="*", default=[-70.0],
                   help="also each pad with white noise at these levels (dBFS) over the file")
    p.add_argument("--beam", type=int, default=10)
    args = p.parse_args()

    import torch

    from fairseq_hkd.generation.segments import SegmenterConfig
    from fairseq_hkd.generation.transcribe import Recognizer, error_rates

    torch.set_num_threads(1)
    conditions = [(s, None) for s in args.pads] + [(s, n) for s in args.pads for n in args.noise_dbfs]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {c: write_padded(args.manifest, c[0], c[1], Path(tmp) / f"{c[0]}_{c[1]}") for c in conditions}
        for trim in (True, False):
            rec = Recognizer.from_checkpoint(args.ckpt, beam=args.beam, cpu=True, input_level="off",
                                             segmenter=SegmenterConfig(trim_files=trim))
            for c in conditions:
                wer = error_rates(rec.transcribe(files[c], batch_size=8))["wer"]
                rows[trim, c] = wer
                print(json.dumps({"trim_files": trim, "pad_s": c[0], "noise_dbfs": c[1], "wer": round(wer, 2)}), flush=True)
    print("\n| silence added at both edges | WER, `--trim-files` | WER, as recorded (default) |\n|---|---|---|")
    for c in conditions:
        name = f"{c[0]:g} s" + ("" if c[1] is None else f", noise {c[1]:g} dBFS")
        print(f"| {name} | {rows[True, c]:.2f} | {rows[False, c]:.2f} |")


if __name__ == "__main__":
    main()
