"""Shared pieces of the corpus-preparation scripts: audio probing, manifest writing, summaries.

A manifest is one TSV per split (docs/DESIGN.md):

    id<TAB>audio<TAB>n_samples<TAB>tgt_text[<TAB>speaker]

with a header line (written and read by :mod:`fairseq_hkd.data.manifest`), ``audio`` a path to a
16 kHz mono wav/flac (absolute, or relative to the manifest's folder) and ``n_samples`` its length in
samples (read from the file header with ``soundfile.info``, which does not decode audio).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import soundfile as sf
from tqdm import tqdm

from fairseq_hkd.data.manifest import write_manifest as _write_manifest

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    """One manifest row (before the audio has been probed, ``n_samples`` is -1)."""

    id: str
    audio: str
    tgt_text: str
    speaker: Optional[str] = None
    n_samples: int = -1


@dataclass(frozen=True)
class AudioInfo:
    path: str
    frames: int
    samplerate: int
    channels: int
    error: Optional[str] = None


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        level=logging.DEBUG if verbose else logging.INFO,
        force=True,  # fairseq configures the root logger on import
    )


def default_jobs() -> int:
    """Threads for probing headers: libsndfile releases the GIL, the work is I/O bound."""
    return max(1, min(8, (os.cpu_count() or 1) * 2))


def _probe(path: str) -> AudioInfo:
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001  (libsndfile raises RuntimeError/LibsndfileError)
        return AudioInfo(path, 0, 0, 0, error=f"{type(e).__name__}: {e}")
    return AudioInfo(path, int(info.frames), int(info.samplerate), int(info.channels))


def probe_audio(paths: Sequence[str], jobs: int = 0, desc: str = "probing audio") -> List[AudioInfo]:
    """Read frame count, sample rate and channels of every file (header only), in input order."""
    jobs = jobs or default_jobs()
    if jobs == 1:
        return [_probe(p) for p in tqdm(paths, desc=desc, unit="file", mininterval=1.0)]
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        return list(tqdm(ex.map(_probe, paths, chunksize=64), total=len(paths), desc=desc,
                         unit="file", mininterval=1.0))


def attach_lengths(
    utts: Sequence[Utterance], jobs: int = 0, desc: str = "probing audio", sample_rate: int = SAMPLE_RATE
) -> Tuple[List[Utterance], Counter]:
    """Probe every utterance's audio; return the usable ones with ``n_samples`` set.

    Unreadable, empty, multi-channel or wrong-rate files are skipped, counted by reason in the
    returned Counter and logged (the first few by name): the manifest promises 16 kHz mono audio.
    """
    infos = probe_audio([u.audio for u in utts], jobs=jobs, desc=desc)
    kept: List[Utterance] = []
    skipped: Counter = Counter()
    for u, info in zip(utts, infos):
        if info.error is not None:
            reason = "unreadable audio"
            detail = info.error
        elif info.samplerate != sample_rate:
            reason = f"sample rate != {sample_rate}"
            detail = f"{info.samplerate} Hz"
        elif info.channels != 1:
            reason = "not mono"
            detail = f"{info.channels} channels"
        elif info.frames <= 0:
            reason = "empty audio"
            detail = "0 samples"
        else:
            kept.append(Utterance(u.id, u.audio, u.tgt_text, u.speaker, info.frames))
            continue
        skipped[reason] += 1
        if skipped[reason] <= 5:
            logger.warning("skipping %s (%s): %s: %s", u.id, u.audio, reason, detail)
    for reason, n in skipped.items():
        logger.warning("skipped %d utterance(s): %s", n, reason)
    return kept, skipped


def write_manifest(path: str, utts: Iterable[Utterance], relative_to: Optional[str] = None) -> int:
    """Write a manifest with :func:`fairseq_hkd.data.manifest.write_manifest`, atomically.

    The speaker column is written when every utterance has one. With ``relative_to`` (the
    manifest's folder), audio paths are written relative to it, which the reader resolves.
    Returns the number of rows.
    """
    utts = list(utts)
    seen = set()
    rows = []
    for u in utts:
        if u.n_samples <= 0:
            raise ValueError(f"{path}: utterance {u.id}: n_samples not set; probe the audio first")
        if u.id in seen:
            raise ValueError(f"{path}: duplicate utterance id {u.id}")
        seen.add(u.id)
        audio = os.path.relpath(u.audio, relative_to) if relative_to else u.audio
        rows.append({"id": u.id, "audio": audio, "n_samples": u.n_samples, "tgt_text": u.tgt_text,
                     "speaker": u.speaker})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        _write_manifest(tmp, rows, with_speaker=bool(utts) and all(u.speaker for u in utts))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(rows)


def split_summary(name: str, utts: Sequence[Utterance], sample_rate: int = SAMPLE_RATE,
                  words: bool = True) -> str:
    """One line: utterances, hours, speakers, characters (without spaces) and words of a split."""
    hours = sum(u.n_samples for u in utts) / sample_rate / 3600.0
    speakers = len({u.speaker for u in utts if u.speaker})
    chars = sum(len(u.tgt_text.replace(" ", "")) for u in utts)
    line = f"{name}: {len(utts)} utterances, {hours:.2f} h, {speakers} speakers, {chars} characters"
    if words:
        line += f", {sum(len(u.tgt_text.split()) for u in utts)} words"
    return line
