"""Read a split of the synthesized corpus again with other accents: the same sentences, speeds, pitches and voice
variants, only the accent changed. Separates what an unseen *accent* costs a model from what an unseen *voice* does.

    python scripts/reread_split.py --data data/synth6k-wide-r2 --like dev --name dev-known-accents
    examples/synth/decode.sh --data data/synth6k-wide-r2 --exp EXP --subsets dev-known-accents

The demo's dev split reads heldout's sentences with voices ``accent+variant`` of which neither the accent nor the
variant is among the training voices' (fairseq_hkd/prepare/voices.py). This writes split NAME: utterance i of
``--like`` read again by ``A+variant``, the variant of that utterance's voice and an accent A drawn (seeded) from
``--accents`` (default: the training voices' accents), at the same speed and pitch. With ``--like dev`` the three
splits then read the same sentences: heldout (training voices), NAME (unseen voices of the training accents), dev
(unseen voices of unseen accents). Writes DATA/wav/NAME/*.wav (espeak-ng | sox, as prepare.sh), DATA/NAME.tsv
(the manifest, speaker = voice) and DATA/NAME.utterances.tsv (id, voice, speed, pitch, text); a file already there
is kept (re-runs synthesize only what is missing). Nothing else in DATA changes.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_hkd.prepare.voices import TRAIN_ACCENTS  # noqa: E402


def plan(rows, like: str, name: str, accents, seed: int):
    """utterances.tsv rows -> [SynthUtt] of split ``name``: each row of split ``like`` with its variant kept and an
    accent drawn from ``accents`` by ``random.Random(f"{seed}-{name}")`` in row order."""
    from fairseq_hkd.prepare.synth import SynthUtt

    rng = random.Random(f"{seed}-{name}")
    out = []
    for r in (r for r in rows if r["split"] == like):
        accent, plus, variant = r["voice"].partition("+")
        if not plus:
            raise SystemExit(f"utterances.tsv: {r['id']} has voice {r['voice']!r}, not accent+variant")
        index = r["id"].rsplit("_", 1)[-1]
        out.append(SynthUtt(f"{name}_{index}", name, r["text"], r["source"], f"{rng.choice(accents)}+{variant}",
                            int(r["speed"]), int(r["pitch"])))
    if not out:
        raise SystemExit(f"utterances.tsv has no utterance of split {like!r}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a corpus folder of examples/synth/prepare.sh")
    p.add_argument("--like", default="dev", help="the split read again")
    p.add_argument("--name", default="dev-known-accents", help="the new split's name")
    p.add_argument("--accents", nargs="+", default=list(TRAIN_ACCENTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)

    from fairseq_hkd.prepare.common import Utterance, attach_lengths, write_manifest
    from fairseq_hkd.prepare.synth import SPLITS, synthesize_all, wav_path

    if args.name in SPLITS:
        raise SystemExit(f"--name {args.name}: prepare.sh's own split; choose another name")
    table = Path(args.data) / "utterances.tsv"
    if not table.is_file():
        raise SystemExit(f"{table} not found: --data must be a folder made by examples/synth/prepare.sh")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    utts = plan(rows, args.like, args.name, args.accents, args.seed)
    written, kept = synthesize_all(utts, args.data, jobs=args.jobs)
    with open(Path(args.data) / f"{args.name}.utterances.tsv", "w", encoding="utf-8") as f:
        f.write("id\tvoice\tspeed\tpitch\ttext\n")
        for u in utts:
            f.write(f"{u.id}\t{u.voice}\t{u.speed}\t{u.pitch}\t{u.text}\n")
    manifest = [Utterance(u.id, wav_path(args.data, u), u.text, u.voice) for u in utts]
    manifest, bad = attach_lengths(manifest, jobs=args.jobs, desc=f"probing {args.name}")
    if bad:
        raise SystemExit(f"{sum(bad.values())} synthesized file(s) in {args.data}/wav/{args.name} are not readable")
    write_manifest(os.path.join(args.data, f"{args.name}.tsv"), manifest, relative_to=args.data)
    print(f"{args.name}: {len(utts)} utterances ({written} synthesized, {kept} already there), voices "
          f"{len({u.voice for u in utts})}; manifest {args.data}/{args.name}.tsv")


if __name__ == "__main__":
    main()
