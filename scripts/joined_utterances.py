"""Decode pairs of utterances joined by a pause, whole, against the same utterances one by one.

Usage::

    python scripts/joined_utterances.py --path exp/synth/cif/checkpoint_best.pt --data data/synth \\
        --split heldout --pairs 40 --pause 0.5

Utterances 2k and 2k+1 of the split's manifest are joined with ``--pause`` seconds of silence
(added to the files' own edges) into one file of at most 20 s, which the transcriber decodes whole
(no segmentation). Printed: WER of the single utterances, of the pairs, and of the singles' texts
joined (the pair's WER if joining cost nothing); the distribution of the pair's CIF token count
minus the singles' (fires a + fires b - 1, one </s> fewer); how many of the pair's word tokens
fire inside the pause (between the first utterance's speech end and the second's speech start,
50 ms in from each; speech = samples above 2 % of the file's peak) against how many of the first
utterance's own word tokens fire after its speech end (a last word that fires late); a few examples. It tells whether a
model copes with segments holding more than one utterance (what the long-audio segmenter makes of
pauses shorter than ``--min-silence``).
"""
import argparse
import dataclasses
import os
import tempfile

import numpy as np
import soundfile as sf


def speech_edges(x: np.ndarray, sr: int):
    """(first, last) time in seconds of a sample above 2 % of the file's peak."""
    loud = np.nonzero(np.abs(x.astype(np.float64)) > 0.02 * max(1, int(np.abs(x).max())))[0]
    return loud[0] / sr, loud[-1] / sr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="heldout")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--pause", type=float, default=0.5)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--examples", type=int, default=4)
    args = p.parse_args()

    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.inputs import AudioItem
    from fairseq_hkd.generation.transcribe import Recognizer, error_rates

    manifest = os.path.join(args.data, f"{args.split}.tsv")
    rows = read_manifest(manifest)[: 2 * args.pairs]
    rec = Recognizer.from_checkpoint(args.path, data=args.data, beam=args.beam)
    singles = [AudioItem(r.id, r.audio, r.tgt_text) for r in rows]
    n = len(rows) // 2
    with tempfile.TemporaryDirectory() as tmp:
        pairs, pauses = [], []
        for k in range(n):
            a, sr = sf.read(rows[2 * k].audio, dtype="int16")
            b, _ = sf.read(rows[2 * k + 1].audio, dtype="int16")
            path = os.path.join(tmp, f"pair{k}.wav")
            sf.write(path, np.concatenate([a, np.zeros(int(args.pause * sr), np.int16), b]), sr)
            pairs.append(AudioItem(f"pair{k}", path, rows[2 * k].tgt_text + " " + rows[2 * k + 1].tgt_text))
            pauses.append((speech_edges(a, sr)[1], len(a) / sr + args.pause + speech_edges(b, sr)[0]))
        S, P = rec.transcribe(singles, timestamps=True), rec.transcribe(pairs, timestamps=True)

    joined = [dataclasses.replace(P[k], text=S[2 * k].text + " " + S[2 * k + 1].text) for k in range(n)]
    refs = [x.reference for x in P]
    print(f"{args.path}: {n} pairs of {args.split}, pause {args.pause} s, beam {args.beam}")
    print(f"WER singles {error_rates(S)['wer']:.2f} | pairs {error_rates(P)['wer']:.2f} | singles joined "
          f"{error_rates(joined)['wer']:.2f}")
    d = [P[k].n_fires - (S[2 * k].n_fires + S[2 * k + 1].n_fires - 1) for k in range(n)]
    print("pair tokens - singles' tokens:", ", ".join(f"{v:+d}: {d.count(v)}" for v in sorted(set(d))))
    in_pause = [sum(end + 0.05 < t < start - 0.05 for t in P[k].token_times) for k, (end, start) in enumerate(pauses)]
    late = [sum(t > end + 0.05 for t in S[2 * k].token_times) for k, (end, _) in enumerate(pauses)]
    print("pair word tokens firing inside the pause:", ", ".join(f"{v}: {in_pause.count(v)}" for v in sorted(set(in_pause))),
          "| first utterance alone, word tokens firing after its speech end:",
          ", ".join(f"{v}: {late.count(v)}" for v in sorted(set(late))))
    for k in range(min(n, args.examples)):
        print(f"REF    {refs[k]}\nPAIR   {P[k].text}\nSINGLE {S[2 * k].text} | {S[2 * k + 1].text}")


if __name__ == "__main__":
    main()
