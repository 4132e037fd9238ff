"""Manifest TSV parsing: ``id, audio, n_samples, tgt_text[, speaker][, sample_rate]``.

File format (tab separated, UTF-8, one header line naming the columns)::

    id      audio               n_samples   tgt_text          speaker   sample_rate
    utt1    wav/utt1.wav        23760       hello world       spk1      16000

``audio`` is absolute or relative to the manifest's directory. ``n_samples`` is the number of
samples in the file at the file's own rate (what ``soundfile.info(path).frames`` reports); with
the rate it gives the utterance's fbank frame count (after resampling to 16 kHz) used for batching
and length filtering before any audio is read, and it is checked when the audio is read. The
optional ``sample_rate`` column is the file's rate (``soundfile.info(path).samplerate``); without
it the dataset reads each file's header once when it loads the split. Every error names
``file:line`` and what to fix.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from fairseq_hkd.errors import UserError, UserFileNotFoundError

REQUIRED_COLUMNS = ("id", "audio", "n_samples", "tgt_text")
OPTIONAL_COLUMNS = ("speaker", "sample_rate")


class ManifestError(UserError):
    """A problem with one manifest line; the message names file:line."""


@dataclass(frozen=True)
class ManifestEntry:
    id: str
    audio: str  # resolved path
    n_samples: int
    tgt_text: str
    speaker: Optional[str]
    where: str  # "path/to/train.tsv:12" (for error messages)
    sample_rate: Optional[int] = None  # the file's rate (optional column); None: not given


def write_manifest(path: str | os.PathLike, rows: List[dict], with_speaker: bool = False,
                   with_sample_rate: bool = False) -> None:
    """Write a manifest (rows: dicts with the column names). Tabs/newlines in fields are rejected."""
    cols = list(REQUIRED_COLUMNS) + (["speaker"] if with_speaker else []) + (["sample_rate"] if with_sample_rate else [])
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            vals = [str(r[c]) for c in cols]
            for c, v in zip(cols, vals):
                if "\t" in v or "\n" in v:
                    raise ValueError(f"manifest field {c}={v!r} contains a tab or newline")
            f.write("\t".join(vals) + "\n")


def read_manifest(path: str | os.PathLike, check_audio_exists: bool = True) -> List[ManifestEntry]:
    """Parse a manifest. Raises ``ManifestError`` naming file:line for: missing header columns, wrong
    field count, duplicate id, non-integer or non-positive ``n_samples`` (zero-length audio) or
    ``sample_rate``,
    empty transcript, missing audio file (when ``check_audio_exists``)."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"manifest {path} not found (expected a TSV with columns {', '.join(REQUIRED_COLUMNS)})")
    root = path.parent
    entries: List[ManifestEntry] = []
    seen = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path}:1: empty manifest (expected a header line {', '.join(REQUIRED_COLUMNS)})")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(
                f"{path}:1: header {header} lacks column(s) {missing}; the header must name "
                f"{', '.join(REQUIRED_COLUMNS)}[, speaker] separated by tabs"
            )
        col = {c: header.index(c) for c in header}
        for lineno, fields in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) != len(header):
                raise ManifestError(
                    f"{where}: {len(fields)} tab-separated fields, header has {len(header)} "
                    f"({', '.join(header)}); check for tabs inside the transcript or a missing column"
                )
            uid = fields[col["id"]].strip()
            if not uid:
                raise ManifestError(f"{where}: empty id")
            if uid in seen:
                raise ManifestError(f"{where}: duplicate id {uid!r} (first at line {seen[uid]})")
            seen[uid] = lineno
            try:
                n = int(fields[col["n_samples"]])
            except ValueError:
                raise ManifestError(f"{where}: n_samples {fields[col['n_samples']]!r} is not an integer") from None
            if n <= 0:
                raise ManifestError(
                    f"{where}: utterance {uid!r} has zero-length audio (n_samples={n}); "
                    "remove the line or fix the audio"
                )
            text = fields[col["tgt_text"]].strip()
            if not text:
                raise ManifestError(f"{where}: utterance {uid!r} has an empty transcript; remove the line or add the text")
            audio = fields[col["audio"]].strip()
            audio_path = audio if os.path.isabs(audio) else str(root / audio)
            if check_audio_exists and not os.path.isfile(audio_path):
                raise ManifestError(f"{where}: audio file {audio_path} of utterance {uid!r} does not exist")
            speaker = fields[col["speaker"]].strip() if "speaker" in col else None
            rate = None
            if "sample_rate" in col:
                value = fields[col["sample_rate"]].strip()
                try:
                    rate = int(value)
                except ValueError:
                    rate = 0
                if rate <= 0:
                    raise ManifestError(
                        f"{where}: sample_rate {value!r} of {uid!r} is not a positive integer; write the file's "
                        "rate (soundfile.info(path).samplerate) or drop the column"
                    )
            entries.append(ManifestEntry(uid, audio_path, n, text, speaker or None, where, rate))
    if not entries:
        raise ManifestError(f"{path}: no utterances")
    return entries
