"""A --noise-dir of babble made from training speech: N recordings of S seconds, each four training
utterances summed (scripts/noisy_manifest.py's babble, at equal speech power, looped from random offsets).

    python examples/synth/results/noise/make_babble_dir.py --manifest data/synth6k-wide-r2/train.tsv \\
        --out /tmp/babble-train --n 40 --seconds 10
"""
import argparse
import importlib.util
import os

import numpy as np
import soundfile as sf

from fairseq_hkd.data.manifest import read_manifest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("noisy_manifest", os.path.join(REPO, "scripts", "noisy_manifest.py"))
    noisy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noisy)
    paths = [e.audio for e in read_manifest(args.manifest)]
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    n = int(args.seconds * 16000)
    for k in range(args.n):
        x = noisy.babble(paths, -1, n, rng)
        sf.write(os.path.join(args.out, f"babble{k:03d}.wav"), (0.5 * x / np.abs(x).max()).astype(np.float32), 16000)
    print(f"{args.n} babble recordings of {args.seconds:g} s in {args.out}")


if __name__ == "__main__":
    main()
