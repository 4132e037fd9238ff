"""LibriSpeech manifests from the corpus's own layout.

Usage:
    python -m fairseq_hkd.prepare.librispeech --corpus /data/LibriSpeech --out data/librispeech \\
        --subsets train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other \\
        --merge train-960=train-clean-100,train-clean-360,train-other-500

Input:
    LibriSpeech/SUBSET/SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac            16 kHz mono
    LibriSpeech/SUBSET/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt            "103-1240-0000 CHAPTER ONE ..."

Output: ``{out}/{SUBSET}.tsv`` (id, audio, n_samples, tgt_text, speaker) and one TSV per ``--merge``
(the listed subsets concatenated). Transcripts are lower-cased for the uncased PLM
(bert-base-uncased). Audio without a transcript line and transcript lines without audio are
counted and logged, not errors.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections import Counter
from typing import Dict, List, Tuple

from fairseq_hkd.prepare.common import (
    Utterance, attach_lengths, default_jobs, setup_logging, split_summary, write_manifest,
)

logger = logging.getLogger("fairseq_hkd.prepare.librispeech")

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500",
           "dev-clean", "dev-other", "test-clean", "test-other")
_TEXT_OK = re.compile(r"^[a-z' ]+$")


def read_chapter(chapter_dir: str, speaker: str, chapter: str) -> Tuple[Dict[str, str], List[str], Counter]:
    """Transcripts ``{utt_id: lower-cased text}`` and flac ids of one chapter folder."""
    problems: Counter = Counter()
    texts: Dict[str, str] = {}
    trans = os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")
    if os.path.isfile(trans):
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.strip().split(" ", 1)
                if not fields[0]:
                    continue
                if len(fields) < 2 or not fields[1].strip():
                    problems["empty transcript"] += 1
                    logger.warning("%s:%d: %s has no text; skipped", trans, lineno, fields[0])
                    continue
                text = " ".join(fields[1].lower().split())
                if not _TEXT_OK.match(text):
                    problems["text outside [a-z' ] (kept)"] += 1
                    logger.warning("%s:%d: text has characters outside [a-z' ]: %r", trans, lineno, text)
                texts[fields[0]] = text
    else:
        problems["chapter without .trans.txt"] += 1
        logger.warning("%s: no %s", chapter_dir, os.path.basename(trans))
    flacs = sorted(e.name[: -len(".flac")] for e in os.scandir(chapter_dir)
                   if e.name.endswith(".flac") and e.is_file())
    return texts, flacs, problems


def collect_subset(subset_dir: str) -> Tuple[List[Utterance], Counter]:
    """All utterances of one subset folder (audio and transcript both present), sorted by id."""
    utts: List[Utterance] = []
    problems: Counter = Counter()
    examples: Dict[str, List[str]] = {"audio without transcript": [], "transcript without audio": []}
    for spk in sorted(e.name for e in os.scandir(subset_dir) if e.is_dir()):
        spk_dir = os.path.join(subset_dir, spk)
        for chapter in sorted(e.name for e in os.scandir(spk_dir) if e.is_dir()):
            chapter_dir = os.path.join(spk_dir, chapter)
            texts, flacs, p = read_chapter(chapter_dir, spk, chapter)
            problems.update(p)
            for utt_id in flacs:
                if utt_id in texts:
                    path = os.path.abspath(os.path.join(chapter_dir, utt_id + ".flac"))
                    utts.append(Utterance(utt_id, path, texts[utt_id], spk))
                else:
                    examples["audio without transcript"].append(utt_id)
            examples["transcript without audio"].extend(sorted(set(texts) - set(flacs)))
    for what, ids in examples.items():
        if ids:
            problems[what] += len(ids)
            logger.warning("%s: %d %s (e.g. %s); skipped", os.path.basename(subset_dir), len(ids), what,
                           ", ".join(ids[:3]))
    utts.sort(key=lambda u: u.id)
    return utts, problems


def prepare(corpus: str, out: str, subsets=SUBSETS, merges: Dict[str, List[str]] | None = None,
            jobs: int = 0) -> Tuple[Dict[str, List[Utterance]], Counter]:
    """Write ``{out}/{subset}.tsv`` per subset and ``{out}/{name}.tsv`` per merge.

    Returns the manifests' utterances by name and the skipped items counted by reason.
    """
    merges = merges or {}
    for name, parts in merges.items():
        missing = [s for s in parts if s not in subsets]
        if missing:
            raise ValueError(f"--merge {name}={','.join(parts)}: {missing} not among --subsets {list(subsets)}")
    result: Dict[str, List[Utterance]] = {}
    problems: Counter = Counter()
    for subset in subsets:
        subset_dir = os.path.join(corpus, subset)
        if not os.path.isdir(subset_dir):
            raise FileNotFoundError(f"{subset_dir} does not exist: extract {subset}.tar.gz into {corpus}/..")
        utts, p = collect_subset(subset_dir)
        utts, skipped = attach_lengths(utts, jobs=jobs, desc=f"librispeech {subset}")
        problems.update({f"{subset}: {k}": v for k, v in (p + skipped).items()})
        write_manifest(os.path.join(out, f"{subset}.tsv"), utts)
        result[subset] = utts
        logger.info("%s -> %s", split_summary(subset, utts), os.path.join(out, f"{subset}.tsv"))
    for name, parts in merges.items():
        utts = [u for s in parts for u in result[s]]
        write_manifest(os.path.join(out, f"{name}.tsv"), utts)
        result[name] = utts
        logger.info("%s -> %s", split_summary(name, utts), os.path.join(out, f"{name}.tsv"))
    logger.info("skipped: %s", ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())) or "none")
    return result, problems


def parse_merge(spec: str) -> Tuple[str, List[str]]:
    name, sep, parts = spec.partition("=")
    if not sep or not name or not parts:
        raise argparse.ArgumentTypeError(f"--merge {spec!r}: expected NAME=SUBSET,SUBSET,...")
    return name, parts.split(",")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write LibriSpeech manifests (one TSV per subset) from LibriSpeech/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", required=True, help="the LibriSpeech folder holding the subset folders")
    p.add_argument("--out", required=True, help="output folder for {subset}.tsv")
    p.add_argument("--subsets", nargs="+", default=list(SUBSETS), help="subset folders to read")
    p.add_argument("--merge", type=parse_merge, action="append", default=[],
                   help="NAME=A,B,...: also write NAME.tsv, the listed subsets concatenated")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="threads reading audio headers")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def cli_main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    prepare(args.corpus, args.out, subsets=tuple(args.subsets), merges=dict(args.merge), jobs=args.jobs)


if __name__ == "__main__":
    cli_main(sys.argv[1:])
