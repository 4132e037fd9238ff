"""WER against recording level: the manifest's utterances played back at other gains, decoded with
``--input-level off`` (as recorded) and ``auto`` (matched to the model's training level, data/level.py).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_input_level.py \\
        --ckpt exp/demo-auto/cif/checkpoint_best.pt --manifest data/synth/test.tsv --gains 0 -6 -12 -20 -30 6

Each utterance is scaled by the gain, clipped to [-1, 1] and written as 16-bit PCM (what a recorder at
that level would have stored: quiet files lose bits, loud ones clip), then all files of one gain are
transcribed with the Recognizer at ``--beam`` (in one process, model loaded once per setting) and
scored against the manifest's transcripts. Prints one JSON line per (setting, gain) and a Markdown
table for BENCHMARKS.md.
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


def write_gained(manifest: str, gain_db: float, out_dir: Path, limit: int):
    """The manifest's first ``limit`` utterances at ``gain_db``, as 16-bit wavs: [AudioItem]."""
    import soundfile as sf

    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.inputs import AudioItem

    out_dir.mkdir(parents=True, exist_ok=True)
    items, clipped = [], 0
    for e in read_manifest(manifest)[:limit]:
        wav = read_audio(e.audio) * np.float32(10.0 ** (gain_db / 20.0))
        clipped += int(np.sum(np.abs(wav) > 1.0))
        path = out_dir / f"{e.id}.wav"
        sf.write(path, np.clip(wav, -1.0, 1.0), 16000, subtype="PCM_16")
        items.append(AudioItem(e.id, str(path), e.tgt_text))
    return items, clipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--manifest", default=str(REPO / "data/synth/test.tsv"))
    p.add_argument("--gains", type=float, nargs="+", default=[0, -6, -12, -20, -30, 6])
    p.add_argument("--settings", nargs="+", default=["off", "auto"])
    p.add_argument("--tolerances", type=float, nargs="+", default=[None],
                   help="--input-level-tolerance values (dB) to compare for each setting but off")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--limit", type=int, default=10 ** 9, help="only the first N utterances")
    args = p.parse_args()

    import fairseq_hkd  # noqa: F401
    from fairseq_hkd.generation.transcribe import Recognizer, error_rates

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {g: write_gained(args.manifest, g, Path(tmp) / f"g{g:+g}", args.limit) for g in args.gains}
        runs = [(s, t) for s in args.settings for t in (args.tolerances if s != "off" else [None])]
        for setting, tol in runs:
            rec = Recognizer.from_checkpoint(args.ckpt, beam=args.beam, cpu=True, input_level=setting,
                                             input_level_tolerance_db=tol)
            name = setting if setting == "off" else f"{setting}, tolerance {rec.level_tolerance_db:g} dB"
            for g, (items, clipped) in sets.items():
                results = [r for r in rec.iter_transcribe(items) if r.ok]
                rates = error_rates(results)
                rows[name, g] = rates["wer"]
                print(json.dumps({"setting": name, "target_nats": rec.level_target, "gain_db": g,
                                  "utterances": len(results), "clipped_samples": clipped,
                                  "wer": round(rates["wer"], 2)}), flush=True)
    print("\n| --input-level | " + " | ".join(f"{g:+g} dB" for g in args.gains) + " |")
    print("|---|" + "---|" * len(args.gains))
    for name in dict.fromkeys(n for n, _ in rows):
        print(f"| {name} | " + " | ".join(f"{rows[name, g]:.2f}" for g in args.gains) + " |")


if __name__ == "__main__":
    main()
