"""Noisy copies of a manifest's recordings, to measure how a model holds up in noise.

    python scripts/noisy_manifest.py --manifest data/synth6k-wide-r2/dev.tsv --noise pink --snr 20 --out /tmp/dev-pink20
    fairseq-hkd-transcribe --path CKPT --manifest /tmp/dev-pink20/dev.tsv --beam 5     # WER in the summary

Each recording gets noise at ``--snr`` dB relative to its speech: the power of its samples above 1 % of
its peak (pauses do not count) over the noise's power, in the waveform (unlike the training
augmentation, which measures mel energies: fairseq_hkd/data/noise.py). Noises: ``white``, ``pink``,
``brown`` (the colours the training augmentation draws from) and ``babble``: four other recordings of the
manifest summed, each from a random offset, looped to length (speech that training never mixes in).
Utterance i draws from ``numpy.random.default_rng((seed, i))``, so a copy is the same every time. Writes
OUT/ID.wav (16-bit PCM at the recording's rate, scaled down only if it would clip) and OUT/NAME.tsv with
the manifest's columns and the new paths (absolute). The manifest is read as training reads it
(fairseq_hkd/data/manifest.py): a bad row stops with one line naming it.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import soundfile as sf
from tqdm import tqdm

from fairseq_hkd.data.manifest import ManifestError, read_manifest, write_manifest
from fairseq_hkd.data.noise import noise_waveform

COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
BABBLE_TALKERS = 4


def speech_power(x: np.ndarray) -> float:
    active = np.abs(x) > 0.01 * np.abs(x).max()
    return float(np.mean(x[active] ** 2)) if active.any() else 0.0


def babble(paths, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    others = [j for j in range(len(paths)) if j != i]
    for j in rng.choice(others, size=min(BABBLE_TALKERS, len(others)), replace=False):
        y, _ = sf.read(paths[j], dtype="float64", always_2d=True)
        y = y.mean(axis=1)
        y = y / np.sqrt(speech_power(y) or 1.0)
        out += np.resize(np.roll(y, -int(rng.integers(len(y)))), n)  # looped to n samples
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="a manifest: id, audio, n_samples, tgt_text[, speaker]")
    p.add_argument("--noise", required=True, choices=[*COLOURS, "babble"])
    p.add_argument("--snr", type=float, required=True, help="dB, speech samples over noise")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        entries = read_manifest(args.manifest)
    except (ManifestError, FileNotFoundError) as e:  # names file:line and the fix
        sys.exit(f"error: {e}")
    paths = [e.audio for e in entries]
    os.makedirs(args.out, exist_ok=True)
    out_tsv = os.path.join(args.out, os.path.basename(args.manifest))
    rows, scaled = [], 0
    for i, entry in enumerate(tqdm(entries, desc=f"{args.noise} {args.snr:g} dB", unit="file")):
        try:
            x, sr = sf.read(entry.audio, dtype="float64", always_2d=True)
        except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
            sys.exit(f"error: {entry.where}: cannot read {entry.audio} ({e}); fix or drop that row")
        x = x.mean(axis=1)
        rng = np.random.default_rng((args.seed, i))
        if args.noise == "babble":
            noise = babble(paths, i, len(x), rng)
        else:
            noise = noise_waveform(COLOURS[args.noise], len(x), rng)
        power = np.mean(noise ** 2)
        noise *= np.sqrt(speech_power(x) / 10 ** (args.snr / 10) / power) if power > 0 else 0.0  # silent: none
        y = x + noise
        peak = np.abs(y).max()
        if peak > 0.99:
            y *= 0.99 / peak
            scaled += 1
        dst = os.path.abspath(os.path.join(args.out, f"{entry.id}.wav"))
        sf.write(dst, y.astype(np.float32), sr, subtype="PCM_16")
        rows.append({"id": entry.id, "audio": dst, "n_samples": entry.n_samples, "tgt_text": entry.tgt_text,
                     "speaker": entry.speaker, "sample_rate": entry.sample_rate})
    write_manifest(out_tsv, rows, with_speaker=any(e.speaker is not None for e in entries),
                   with_sample_rate=any(e.sample_rate is not None for e in entries))
    print(f"wrote {len(rows)} noisy recordings ({args.noise}, {args.snr:g} dB SNR; {scaled} scaled down to avoid "
          f"clipping) and {out_tsv}")



if __name__ == "__main__":
    main()
