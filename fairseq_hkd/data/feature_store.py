"""Precomputed feature store: the raw log-mel of every utterance of a split in one array file.

Files of a split (written by ``fairseq-hkd-feature-store``, read by the dataset)::

    {split}.fbank.bin          one raw array [total_frames, 80] (float16 or float32), utterances back to back
    {split}.fbank.index.json   {"meta": {...fbank options, dtype, manifest hash...},
                                "ids": [...], "offsets": [...], "frames": [...]}

Stored features are raw log-mel (before CMVN), so the CMVN choice stays a training option.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from fairseq_hkd.data.audio import COUNTERS, SAMPLE_RATE, read_audio
from fairseq_hkd.data.fbank import FRAME_LENGTH_MS, FRAME_SHIFT_MS, NUM_MEL_BINS, fbank
from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.data.units import file_sha1
from fairseq_hkd.errors import UserError

STORE_SUFFIX_BIN = ".fbank.bin"
STORE_SUFFIX_INDEX = ".fbank.index.json"


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
            raise UserError(
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
    wav = read_audio(entry.audio, entry.where, entry.n_samples, strict_sample_rate=strict_sample_rate,
                     expected_rate=entry.sample_rate)
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
