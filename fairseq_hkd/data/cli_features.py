"""Console scripts of the feature pipeline: ``fairseq-hkd-feature-store`` (the split's fbank into a
feature store, ``feature_store.py``) and ``fairseq-hkd-cmvn`` (global CMVN stats, ``cmvn.py``).

Usage::

    fairseq-hkd-feature-store data/synth --splits train valid
    fairseq-hkd-cmvn data/synth --split train            # -> data/synth/cmvn.npz
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fairseq_hkd.data.cmvn import CmvnAccumulator
from fairseq_hkd.data.feature_store import FeatureStore, iter_features, write_store
from fairseq_hkd.data.manifest import read_manifest


def store_cli_main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(
        prog="fairseq-hkd-feature-store",
        description="Precompute 80-dim log-mel fbank of manifest splits into one array file + index per split.",
    )
    p.add_argument("data_dir", help="directory with {split}.tsv manifests; the store is written next to them")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to process")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored precision")
    p.add_argument("--workers", type=int, default=1, help="feature extraction processes")
    p.add_argument("--strict-sample-rate", action="store_true", help="reject audio not at 16 kHz instead of resampling")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for split in args.splits:
        s = write_store(args.data_dir, split, args.dtype, args.workers, args.strict_sample_rate)
        counts = ", ".join(f"{k}: {v}" for k, v in s["counts"].items()) or "none resampled or down-mixed"
        print(f"{s['split']}: {s['utterances']} utterances, {s['frames']} frames ({s['hours']:.2f} h) "
              f"-> {s['path']} ({s['bytes'] / 2**20:.1f} MiB) in {s['seconds']:.1f} s; {counts}")


def cmvn_cli_main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(
        prog="fairseq-hkd-cmvn", description="Compute global CMVN stats (mean, std per mel bin) over a split.",
    )
    p.add_argument("data_dir", help="directory with {split}.tsv (and optionally the split's feature store)")
    p.add_argument("--split", default="train", help="split to accumulate over")
    p.add_argument("--out", default=None, help="output .npz (default: DATA_DIR/cmvn.npz)")
    p.add_argument("--strict-sample-rate", action="store_true", help="reject audio not at 16 kHz instead of resampling")
    args = p.parse_args(argv)
    from tqdm import tqdm

    manifest = str(Path(args.data_dir) / f"{args.split}.tsv")
    entries = read_manifest(manifest)
    if FeatureStore.exists(args.data_dir, args.split):
        store = FeatureStore(args.data_dir, args.split, manifest)
        source = ((e.id, store.get(e.id)) for e in entries)
        how = "feature store"
    else:
        source = iter_features(manifest, args.strict_sample_rate)
        how = "audio"
    acc = CmvnAccumulator()
    t0 = time.time()
    for _, feats in tqdm(source, total=len(entries), desc=f"cmvn {args.split}", unit="utt"):
        acc.add(feats)
    out = args.out or str(Path(args.data_dir) / "cmvn.npz")
    stats = acc.stats()
    np.savez(out, **stats)
    print(f"cmvn: {len(entries)} utterances, {acc.count} frames from the {how} in {time.time() - t0:.1f} s -> {out} "
          f"(mean of means {stats['mean'].mean():.3f}, mean std {stats['std'].mean():.3f})")
