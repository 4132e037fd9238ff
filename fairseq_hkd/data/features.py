"""80-dim log-mel fbank (25 ms / 10 ms, kaldi-native-fbank), CMVN, and a precomputed feature store.

Feature store of a split (written by ``fairseq-hkd-feature-store``, read by the dataset)::

    {split}.fbank.bin          one raw array [total_frames, 80] (float16 or float32), utterances back to back
    {split}.fbank.index.json   {"meta": {...fbank options, dtype, manifest hash...},
                                "ids": [...], "offsets": [...], "frames": [...]}

Stored features are raw log-mel (before CMVN), so the CMVN choice stays a training option.

Global CMVN stats (written by ``fairseq-hkd-cmvn``): ``cmvn.npz`` with ``mean`` [80], ``std`` [80],
``count`` and the float64 sums they came from.

Usage::

    fairseq-hkd-feature-store data/synth --splits train valid
    fairseq-hkd-cmvn data/synth --split train            # -> data/synth/cmvn.npz
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from fairseq_hkd.data.audio import COUNTERS, SAMPLE_RATE, read_audio
from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.data.units import file_sha1

logger = logging.getLogger(__name__)

NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WAVE_SCALE = 32768.0  # Kaldi convention: features of int16-range samples
CMVN_TYPES = ("global", "utterance", "none")
STORE_SUFFIX_BIN = ".fbank.bin"
STORE_SUFFIX_INDEX = ".fbank.index.json"


# ---------------------------------------------------------------------------------------------- fbank
def fbank_options(num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = 0.0  # deterministic features (SpecAugment provides the noise)
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_mel_bins
    return opts


def num_frames(n_samples: int | np.ndarray, sample_rate: int = SAMPLE_RATE):
    """Frames that ``fbank`` yields for ``n_samples`` samples (snip_edges: whole windows only)."""
    win = int(sample_rate * FRAME_LENGTH_MS / 1000)
    hop = int(sample_rate * FRAME_SHIFT_MS / 1000)
    n = np.asarray(n_samples, dtype=np.int64)
    out = np.where(n >= win, 1 + (n - win) // hop, 0)
    return int(out) if out.ndim == 0 else out


def fbank(wav: np.ndarray, num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log-mel filterbank of a mono waveform.

    Args:
        wav: float32 [n] in [-1, 1] at ``sample_rate``.
    Returns:
        float32 [num_frames(n), num_mel_bins].
    """
    import kaldi_native_fbank as knf

    extractor = knf.OnlineFbank(fbank_options(num_mel_bins, sample_rate))
    extractor.accept_waveform(sample_rate, np.asarray(wav, dtype=np.float32) * WAVE_SCALE)
    extractor.input_finished()
    n = extractor.num_frames_ready
    out = np.empty((n, num_mel_bins), dtype=np.float32)
    for i in range(n):
        out[i] = extractor.get_frame(i)
    return out


# ---------------------------------------------------------------------------------------------- CMVN
def utterance_cmvn(feats: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-utterance mean/variance normalisation of [T, F] (statistics in float64)."""
    x = feats.astype(np.float64)
    mean = x.mean(axis=0)
    std = np.sqrt(np.maximum(x.var(axis=0), eps * eps))
    return ((x - mean) / std).astype(np.float32)


class GlobalCmvn:
    """Global mean/variance normalisation with stats from ``fairseq-hkd-cmvn``."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"global CMVN stats {path} not found: run `fairseq-hkd-cmvn DATA_DIR --split train` "
                "or use --cmvn utterance"
            )
        stats = np.load(path)
        self.path = path
        self.mean = stats["mean"].astype(np.float32)
        self.std = stats["std"].astype(np.float32)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        if feats.shape[1] != self.mean.shape[0]:
            raise ValueError(f"CMVN stats {self.path} have dim {self.mean.shape[0]}, features have {feats.shape[1]}")
        return (feats - self.mean) / self.std


class CmvnAccumulator:
    """Float64 sums for global CMVN stats."""

    def __init__(self, dim: int = NUM_MEL_BINS):
        self.count = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)

    def add(self, feats: np.ndarray) -> None:
        x = feats.astype(np.float64)
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sumsq += (x * x).sum(axis=0)

    def stats(self, eps: float = 1e-5) -> Dict[str, np.ndarray]:
        if self.count == 0:
            raise ValueError("no frames accumulated for CMVN")
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - mean * mean, eps * eps)
        return {"mean": mean, "std": np.sqrt(var), "count": np.int64(self.count), "sum": self.sum, "sumsq": self.sumsq}


def build_cmvn(kind: str, stats_path: Optional[str] = None):
    """``global`` | ``utterance`` | ``none`` -> callable [T, F] -> [T, F]."""
    if kind == "global":
        return GlobalCmvn(stats_path)
    if kind == "utterance":
        return utterance_cmvn
    if kind == "none":
        return lambda x: x
    raise ValueError(f"unknown --cmvn {kind!r}: choose one of {', '.join(CMVN_TYPES)}")


# ---------------------------------------------------------------------------------------------- feature store
def store_paths(data_dir: str, split: str) -> Tuple[Path, Path]:
    return Path(data_dir) / f"{split}{STORE_SUFFIX_BIN}", Path(data_dir) / f"{split}{STORE_SUFFIX_INDEX}"


def store_meta(manifest: str, dtype: str) -> dict:
    return {
        "num_mel_bins": NUM_MEL_BINS, "sample_rate": SAMPLE_RATE, "frame_length_ms": FRAME_LENGTH_MS,
        "frame_shift_ms": FRAME_SHIFT_MS, "dtype": dtype, "manifest_sha1": file_sha1(manifest),
    }


class FeatureStore:
    """Read side: memory-mapped raw log-mel of one split. ``get(utt_id) -> float32 [T, 80]``."""

    def __init__(self, data_dir: str, split: str, manifest: Optional[str] = None):
        bin_path, index_path = store_paths(data_dir, split)
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        self.meta = index["meta"]
        if manifest is not None and self.meta["manifest_sha1"] != file_sha1(manifest):
            raise ValueError(
                f"feature store {index_path} was built from another version of {manifest}; "
                f"rebuild it: fairseq-hkd-feature-store {data_dir} --splits {split}"
            )
        frames = np.asarray(index["frames"], dtype=np.int64)
        self.offsets = dict(zip(index["ids"], zip(index["offsets"], frames.tolist())))
        total = int(frames.sum())
        dim = int(self.meta["num_mel_bins"])
        self.array = np.memmap(bin_path, dtype=self.meta["dtype"], mode="r", shape=(total, dim))

    @staticmethod
    def exists(data_dir: str, split: str) -> bool:
        return all(p.is_file() for p in store_paths(data_dir, split))

    def frames(self, utt_id: str) -> int:
        return self.offsets[utt_id][1]

    def get(self, utt_id: str) -> np.ndarray:
        off, n = self.offsets[utt_id]
        return np.asarray(self.array[off: off + n], dtype=np.float32)


def _features_of(entry, strict_sample_rate: bool):
    """(raw log-mel [T, 80], {event: count} of resampling / down-mixing for this file)."""
    before = dict(COUNTERS.counts)
    wav = read_audio(entry.audio, entry.where, entry.n_samples, strict_sample_rate=strict_sample_rate)
    return fbank(wav), {k: v - before.get(k, 0) for k, v in COUNTERS.counts.items() if v != before.get(k, 0)}


def iter_features(manifest: str, strict_sample_rate: bool = False, workers: int = 1,
                  counts: Optional[Counter] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """(utt_id, raw log-mel [T, 80]) for every manifest line, in manifest order. Resampled /
    down-mixed files are added to ``counts`` (also when computed in worker processes)."""
    from functools import partial

    entries = read_manifest(manifest)
    fn = partial(_features_of, strict_sample_rate=strict_sample_rate)
    if workers <= 1:
        results = map(fn, entries)
        pool = None
    else:
        from multiprocessing import Pool

        pool = Pool(workers)
        results = pool.imap(fn, entries, chunksize=8)
    try:
        for e, (feats, events) in zip(entries, results):
            if counts is not None:
                counts.update(events)
            yield e.id, feats
    finally:
        if pool is not None:
            pool.terminate()


def write_store(data_dir: str, split: str, dtype: str = "float16", workers: int = 1,
                strict_sample_rate: bool = False, progress: bool = True) -> dict:
    """Compute the split's features into the store; returns a summary dict."""
    from tqdm import tqdm

    manifest = str(Path(data_dir) / f"{split}.tsv")
    n_utts = len(read_manifest(manifest))
    bin_path, index_path = store_paths(data_dir, split)
    tmp_bin = bin_path.with_suffix(bin_path.suffix + ".tmp")
    ids, offsets, frames = [], [], []
    offset, t0, counts = 0, time.time(), Counter()
    with open(tmp_bin, "wb") as f:
        for uid, feats in tqdm(iter_features(manifest, strict_sample_rate, workers, counts), total=n_utts,
                               desc=f"fbank {split}", unit="utt", disable=not progress):
            f.write(np.ascontiguousarray(feats, dtype=dtype).tobytes())
            ids.append(uid)
            offsets.append(offset)
            frames.append(len(feats))
            offset += len(feats)
    tmp_bin.replace(bin_path)
    with open(index_path, "w", encoding="utf-8") as f:
        json.dump({"meta": store_meta(manifest, dtype), "ids": ids, "offsets": offsets, "frames": frames}, f)
    return {"split": split, "utterances": len(ids), "frames": offset, "hours": offset * FRAME_SHIFT_MS / 3.6e6,
            "bytes": bin_path.stat().st_size, "seconds": time.time() - t0, "path": str(bin_path),
            "counts": dict(counts)}


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
