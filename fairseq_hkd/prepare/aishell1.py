"""AISHELL-1 manifests from the corpus's own layout.

Usage:
    python -m fairseq_hkd.prepare.aishell1 --corpus /data/aishell/data_aishell --out data/aishell1

Input (after extracting the per-speaker tarballs under ``wav/``; examples/aishell1/prepare.sh does it):
    data_aishell/wav/{train,dev,test}/S0002/BAC009S0002W0122.wav    16 kHz mono
    data_aishell/transcript/aishell_transcript_v0.8.txt              "BAC009S0002W0122 而 对 楼市 ..."

Output: ``{out}/{train,dev,test}.tsv`` (id, audio, n_samples, tgt_text, speaker). Transcripts are
word-segmented with spaces; the spaces are removed so that the target is a character string
(``而对楼市成交抑制作用最大的限购``), as bert-base-chinese sees it.

The transcript lists utterances that have no audio, and some audio has no transcript: both are
counted and logged, not errors.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from typing import Dict, List, Tuple

from fairseq_hkd.prepare.common import (
    Utterance, attach_lengths, default_jobs, setup_logging, split_summary, write_manifest,
)

logger = logging.getLogger("fairseq_hkd.prepare.aishell1")

SPLITS = ("train", "dev", "test")
TRANSCRIPT = os.path.join("transcript", "aishell_transcript_v0.8.txt")


def find_corpus_root(corpus: str) -> str:
    """Accept ``data_aishell`` itself or the folder that contains it."""
    for root in (corpus, os.path.join(corpus, "data_aishell")):
        if os.path.isfile(os.path.join(root, TRANSCRIPT)):
            return root
    raise FileNotFoundError(
        f"no {TRANSCRIPT} under {corpus} or {os.path.join(corpus, 'data_aishell')}: "
        "point --corpus at the extracted data_aishell folder")


def read_transcripts(path: str) -> Tuple[Dict[str, str], Counter]:
    """``{utt_id: text without spaces}``; empty or duplicate lines are counted and logged."""
    texts: Dict[str, str] = {}
    problems: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            utt_id, words = fields[0], fields[1:]
            if not words:
                problems["empty transcript"] += 1
                logger.warning("%s:%d: %s has no text; skipped", path, lineno, utt_id)
                continue
            if utt_id in texts:
                problems["duplicate transcript"] += 1
                logger.warning("%s:%d: %s listed again; keeping the first", path, lineno, utt_id)
                continue
            texts[utt_id] = "".join(words)
    return texts, problems


def list_wavs(wav_dir: str) -> List[Tuple[str, str, str]]:
    """``(utt_id, speaker, path)`` for every ``SPEAKER/*.wav`` under ``wav_dir``, sorted by id."""
    found = []
    for spk in sorted(os.scandir(wav_dir), key=lambda e: e.name):
        if not spk.is_dir():
            continue
        for e in os.scandir(spk.path):
            if e.name.endswith(".wav") and e.is_file():
                found.append((e.name[: -len(".wav")], spk.name, os.path.abspath(e.path)))
    found.sort()
    return found


def prepare(corpus: str, out: str, splits=SPLITS, jobs: int = 0) -> Tuple[Dict[str, List[Utterance]], Counter]:
    """Write ``{out}/{split}.tsv`` for each split.

    Returns the manifests' utterances by split and the skipped items counted by reason.
    """
    root = find_corpus_root(corpus)
    texts, problems = read_transcripts(os.path.join(root, TRANSCRIPT))
    logger.info("%d transcripts in %s", len(texts), os.path.join(root, TRANSCRIPT))

    with_audio = set()
    result: Dict[str, List[Utterance]] = {}
    for split in SPLITS:  # scan every split present so "transcript without audio" is exact
        wav_dir = os.path.join(root, "wav", split)
        if not os.path.isdir(wav_dir):
            if split in splits:
                raise FileNotFoundError(
                    f"{wav_dir} does not exist: extract data_aishell/wav/*.tar.gz there first "
                    "(examples/aishell1/prepare.sh stage 0)")
            continue
        wavs = list_wavs(wav_dir)
        with_audio.update(u for u, _, _ in wavs)
        if split not in splits:
            continue
        utts, no_text = [], []
        for utt_id, spk, path in wavs:
            if utt_id in texts:
                utts.append(Utterance(utt_id, path, texts[utt_id], spk))
            else:
                no_text.append(utt_id)
        if no_text:
            problems[f"{split}: audio without transcript"] += len(no_text)
            logger.warning("%s: %d wav file(s) have no transcript (e.g. %s); skipped",
                           split, len(no_text), ", ".join(no_text[:3]))
        utts, skipped = attach_lengths(utts, jobs=jobs, desc=f"aishell1 {split}")
        for reason, n in skipped.items():
            problems[f"{split}: {reason}"] += n
        write_manifest(os.path.join(out, f"{split}.tsv"), utts)
        result[split] = utts

    no_audio = sorted(set(texts) - with_audio)
    if no_audio:
        problems["transcript without audio"] += len(no_audio)
        logger.info("%d transcript line(s) have no audio in any split (e.g. %s); skipped",
                    len(no_audio), ", ".join(no_audio[:3]))
    for split, utts in result.items():
        logger.info("%s -> %s", split_summary(split, utts, words=False), os.path.join(out, f"{split}.tsv"))
    logger.info("skipped: %s", ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())) or "none")
    return result, problems


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write AISHELL-1 manifests (train/dev/test TSV) from data_aishell/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", required=True, help="the extracted data_aishell folder (or its parent)")
    p.add_argument("--out", required=True, help="output folder for {split}.tsv")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to write")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="threads reading audio headers")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def cli_main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    prepare(args.corpus, args.out, splits=tuple(args.splits), jobs=args.jobs)


if __name__ == "__main__":
    cli_main(sys.argv[1:])
