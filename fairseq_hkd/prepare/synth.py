"""Synthesize the embedded English demo corpus with espeak-ng (+ sox to 16 kHz mono).

Usage:
    python -m fairseq_hkd.prepare.synth --out data/synth                 # 3,000 / 150 / 200 utterances
    python -m fairseq_hkd.prepare.synth --out /tmp/s --n-train 6 --n-heldout 2 --n-test 2 --seed 3

Recipe (recipe A of the demo calibration): sentences from WordNet examples, fortunes and KJV Bible
clauses (:mod:`fairseq_hkd.prepare.sentences`), 4-12 words, vocabulary restricted to the pool's 700
most frequent words. Three splits with disjoint sentences, and a fourth that reads heldout's:
    train     training voices
    heldout   training voices, held-out sentences
    test      unseen voices (no base voice or variant shared with training), held-out sentences
    dev       the first ``--n-dev`` heldout sentences read by development voices: test's accents with
              voice variants that neither training nor test uses. It is where choices meant for unseen
              voices are made (augmentation), so that test is only reported; heldout, read by the
              training voices, cannot tell whether such a choice pays.
The voices are in :mod:`fairseq_hkd.prepare.voices` (``--train-voices wide``, the default since 2026-12-05:
204 training voices; ``narrow``: the 28 of before; or the voices themselves).
Voice, speed (words/min) and pitch are drawn per utterance. Everything is deterministic given
``--seed`` (sox runs without dither), and a rerun skips the wav files that already exist, so an
interrupted run resumes; ``synth_config.json`` guards against resuming with other settings.

Output in ``--out``:
    wav/{split}/{id}.wav      16 kHz, mono, 16-bit
    {split}.tsv               manifests (id, audio relative to --out, n_samples, tgt_text, speaker = voice)
    utterances.tsv            id, split, voice, speed, pitch, source, text
    synth_config.json         the settings, espeak-ng version and pool statistics
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import soundfile as sf
from tqdm import tqdm

from fairseq_hkd.prepare.common import (
    SAMPLE_RATE, Utterance, attach_lengths, setup_logging, split_summary, write_manifest,
)
from fairseq_hkd.prepare.sentences import (
    FORTUNE_DIR, SOURCES, WORDNET_DIR, Pool, build_pool, read_sentence_file, read_sources,
)
from fairseq_hkd.prepare.voices import DEV_VOICES, TEST_VOICES, TRAIN_VOICE_SETS, TRAIN_VOICES, train_voices

logger = logging.getLogger("fairseq_hkd.prepare.synth")

SPLITS = ("train", "heldout", "test", "dev")
# settings a corpus folder made before they existed lacks; their defaults are what such a folder means
ADDED_SETTINGS = ("n_dev", "dev_voices")
# Settings added later with the value a corpus made before them has (a missing key reads as this).
ADDED_DEFAULTS = {"train_readings": 1}


@dataclass(frozen=True)
class SynthUtt:
    id: str
    split: str
    text: str
    source: str
    voice: str
    speed: int
    pitch: int


def plan_corpus(pool: Pool, sizes: Dict[str, int], seed: int, train_voices: Sequence[str],
                test_voices: Sequence[str], speed: Tuple[int, int], pitch: Tuple[int, int],
                dev_voices: Sequence[str] = (), train_readings: int = 1) -> List[SynthUtt]:
    """Draw sentences (disjoint across splits) and per-utterance voice/speed/pitch.

    Sentences are taken from one seeded shuffle of the pool in the order test, heldout, train,
    so growing ``--n-train`` leaves the evaluation sets unchanged. ``sizes["dev"]`` (optional) reads
    the first heldout sentences again with ``dev_voices``, drawn from a generator of its own, so
    adding it changes no other split. ``train_readings`` > 1 reads every training sentence that many
    times: reading k (ids ``train_NNNNN_rK``) by a training voice other than the earlier readings',
    with its own speed and pitch, from a generator of its own per reading, so the first reading and
    the other splits are the same as with one reading.
    """
    if train_readings < 1:
        raise ValueError(f"--train-readings must be >= 1 (got {train_readings})")
    if train_readings > len(set(train_voices)):
        raise ValueError(f"--train-readings {train_readings} is more than the {len(set(train_voices))} "
                         "training voices: each reading of a sentence takes another voice")
    named = {"--train-voices": set(train_voices), "--test-voices": set(test_voices),
             "--dev-voices": set(dev_voices)}
    for i, (a, va) in enumerate(named.items()):
        for b, vb in list(named.items())[i + 1:]:
            if va & vb:
                raise ValueError(f"voices {sorted(va & vb)} are in both {a} and {b}")
    n_dev = sizes.get("dev", 0)
    if n_dev > sizes["heldout"]:
        raise ValueError(f"--n-dev {n_dev} is more than --n-heldout {sizes['heldout']}: dev reads heldout's sentences")
    if n_dev and not dev_voices:
        raise ValueError("--n-dev needs --dev-voices")
    need = sum(n for split, n in sizes.items() if split != "dev")
    if need > len(pool.sentences):
        raise ValueError(f"{need} utterances requested but the sentence pool has only "
                         f"{len(pool.sentences)}: lower the sizes or raise --vocab-size")
    order = list(pool.sentences)
    random.Random(seed).shuffle(order)
    utts, start = [], 0
    for split in ("test", "heldout", "train"):
        rng = random.Random(f"{seed}-{split}")
        voices = test_voices if split == "test" else train_voices
        for i, text in enumerate(order[start:start + sizes[split]]):
            utts.append(SynthUtt(f"{split}_{i:05d}", split, text, pool.source[text], rng.choice(voices),
                                 rng.randint(*speed), rng.randint(*pitch)))
        start += sizes[split]
    train = [u for u in utts if u.split == "train"]
    taken = {u.id: {u.voice} for u in train}  # voices that already read the sentence
    for k in range(2, train_readings + 1):
        rng = random.Random(f"{seed}-train-r{k}")
        for u in train:
            voice = rng.choice([v for v in train_voices if v not in taken[u.id]])
            taken[u.id].add(voice)
            utts.append(SynthUtt(f"{u.id}_r{k}", "train", u.text, u.source, voice,
                                 rng.randint(*speed), rng.randint(*pitch)))
    rng = random.Random(f"{seed}-dev")
    heldout = [u for u in utts if u.split == "heldout"]
    for i, u in enumerate(heldout[:n_dev]):
        utts.append(SynthUtt(f"dev_{i:05d}", "dev", u.text, u.source, rng.choice(dev_voices),
                             rng.randint(*speed), rng.randint(*pitch)))
    return utts


def wav_path(out: str, utt: SynthUtt) -> str:
    return os.path.join(os.path.abspath(out), "wav", utt.split, f"{utt.id}.wav")


def _is_valid_wav(path: str) -> bool:
    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0


def synthesize(utt: SynthUtt, path: str, espeak: str = "espeak-ng", sox: str = "sox") -> bool:
    """Write ``path`` (16 kHz mono 16-bit wav); returns False when a valid file was already there."""
    if os.path.exists(path) and _is_valid_wav(path):
        return False
    tmp = f"{path}.tmp.wav"
    tts = subprocess.Popen([espeak, "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch),
                            "--stdout", utt.text], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # -D: no dither (bit-exact reruns); -G: guard against clipping in the resampler.
    conv = subprocess.run([sox, "-q", "-D", "-G", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1",
                           "-b", "16", "-e", "signed-integer", "-t", "wav", tmp],
                          stdin=tts.stdout, capture_output=True, check=False)
    tts.stdout.close()
    tts_err = tts.stderr.read().decode(errors="replace").strip()
    tts.stderr.close()
    if tts.wait() != 0 or conv.returncode != 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(f"synthesis of {utt.id} ({utt.voice}, {utt.text!r}) failed: "
                           f"{espeak}: {tts_err or 'ok'}; {sox}: {conv.stderr.decode(errors='replace').strip() or 'ok'}")
    os.replace(tmp, path)
    return True


def synthesize_all(utts: Sequence[SynthUtt], out: str, jobs: int = 2, espeak: str = "espeak-ng",
                   sox: str = "sox") -> Tuple[int, int]:
    """Synthesize every utterance with ``jobs`` concurrent espeak-ng | sox pipelines.

    Returns (written, skipped because already there).
    """
    for split in {u.split for u in utts}:
        os.makedirs(os.path.join(out, "wav", split), exist_ok=True)
    written = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futures = [ex.submit(synthesize, u, wav_path(out, u), espeak, sox) for u in utts]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="synthesizing", unit="utt",
                        mininterval=1.0):
            written += bool(fut.result())
    return written, len(utts) - written


def tool_version(cmd: Sequence[str]) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(f"'{cmd[0]}' not found: install the Debian packages espeak-ng and sox "
                                "(apt-get install espeak-ng sox; scripts/setup.sh does it)")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"


def check_config(out: str, config: dict) -> None:
    """Write ``synth_config.json``, or refuse to resume into a folder made with other settings."""
    path = os.path.join(out, "synth_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        old = {**ADDED_DEFAULTS, **old}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k != "pool_stats"
                      and not (k in ADDED_SETTINGS and k not in old))
        if diff:
            raise ValueError(f"{path} was written with other settings ({', '.join(diff)} differ): "
                             f"use another --out, or delete {out} to start over")
        if all(k in old for k in ADDED_SETTINGS):
            return
        logger.info("%s: a corpus made before %s existed; adding them", path, ", ".join(ADDED_SETTINGS))
    os.makedirs(out, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)


def corpus_stats(manifests: Dict[str, List[Utterance]]) -> List[str]:
    """Summary lines: per split, then word types and the test/heldout words unseen in training."""
    lines = [split_summary(s, u) for s, u in manifests.items()]
    train_words = {w for u in manifests.get("train", []) for w in u.tgt_text.split()}
    for split, utts in manifests.items():
        words = [w for u in utts for w in u.tgt_text.split()]
        voices = len({u.speaker for u in utts})
        msg = f"{split}: {len(set(words))} word types, {voices} voices"
        if split != "train" and words:
            oov = sum(w not in train_words for w in words) / len(words)
            msg += f", {100 * oov:.2f}% of words unseen in train"
        lines.append(msg)
    return lines


def prepare(args: argparse.Namespace) -> Dict[str, List[Utterance]]:
    out = os.path.abspath(args.out)
    t0 = time.time()
    espeak_version = tool_version([args.espeak, "--version"])
    tool_version([args.sox, "--version"])
    raw = (read_sentence_file(args.sentences) if args.sentences else
           read_sources(args.sources, args.wordnet_dir, args.fortune_dir, args.bible_cmd))
    pool = build_pool(raw, args.min_words, args.max_words, args.vocab_size)
    logger.info("sentence pool: %s", ", ".join(f"{k} {v}" for k, v in pool.stats.items()))
    if args.n_dev is None:
        args.n_dev = args.n_heldout
    args.train_voices = train_voices(args.train_voices)  # a set's name -> its voices
    sizes = {"train": args.n_train, "heldout": args.n_heldout, "test": args.n_test, "dev": args.n_dev}
    config = {k: v for k, v in vars(args).items() if k not in ("out", "jobs", "verbose")}
    config.update(espeak_version=espeak_version, pool_stats=pool.stats, train_voices=list(args.train_voices),
                  test_voices=list(args.test_voices), dev_voices=list(args.dev_voices))
    utts = plan_corpus(pool, sizes, args.seed, args.train_voices, args.test_voices,
                       tuple(args.speed), tuple(args.pitch), args.dev_voices, args.train_readings)
    check_config(out, config)
    with open(os.path.join(out, "utterances.tsv"), "w", encoding="utf-8") as f:
        f.write("id\tsplit\tvoice\tspeed\tpitch\tsource\ttext\n")
        for u in utts:
            f.write(f"{u.id}\t{u.split}\t{u.voice}\t{u.speed}\t{u.pitch}\t{u.source}\t{u.text}\n")
    t1 = time.time()
    written, skipped = synthesize_all(utts, out, args.jobs, args.espeak, args.sox)
    t2 = time.time()
    manifests: Dict[str, List[Utterance]] = {}
    for split in SPLITS:
        if split == "dev" and not args.n_dev:
            continue
        rows = [Utterance(u.id, wav_path(out, u), u.text, u.voice) for u in utts if u.split == split]
        rows, bad = attach_lengths(rows, jobs=args.jobs, desc=f"probing {split}")
        if bad:
            raise RuntimeError(f"{sum(bad.values())} synthesized file(s) in {out}/wav/{split} are not "
                               f"valid 16 kHz mono audio ({dict(bad)}): delete them and rerun")
        write_manifest(os.path.join(out, f"{split}.tsv"), rows, relative_to=out)
        manifests[split] = rows
    for line in corpus_stats(manifests):
        logger.info(line)
    audio_h = sum(u.n_samples for r in manifests.values() for u in r) / SAMPLE_RATE / 3600
    logger.info("synthesized %d utterance(s), %d already there; synthesis %.1f s (%.1f h of audio, "
                "%d jobs), total %.1f s -> %s", written, skipped, t2 - t1, audio_h, args.jobs,
                time.time() - t0, out)
    return manifests


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Synthesize the English demo corpus (espeak-ng + sox).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (wav/, {split}.tsv, ...)")
    p.add_argument("--n-train", type=int, default=3000, help="training sentences (training voices; utterances: this times --train-readings)")
    p.add_argument("--train-readings", type=int, default=1,
                   help="readings of every training sentence, each by another training voice (speed, pitch "
                        "drawn again); the other splits do not change")
    p.add_argument("--n-heldout", type=int, default=150, help="held-out sentences, training voices")
    p.add_argument("--n-test", type=int, default=200, help="held-out sentences, unseen voices")
    p.add_argument("--n-dev", type=int, default=None,
                   help="the first N heldout sentences again, read by --dev-voices (default and at most: --n-heldout)")
    p.add_argument("--seed", type=int, default=1, help="seed of sentence, voice, speed and pitch draws")
    p.add_argument("--jobs", type=int, default=2, help="concurrent espeak-ng | sox pipelines")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                   help="Debian text sources of the sentence pool")
    p.add_argument("--sentences", default=None, help="a text file, one sentence a line, instead of --sources")
    p.add_argument("--min-words", type=int, default=4, help="shortest sentence kept (words)")
    p.add_argument("--max-words", type=int, default=12, help="longest sentence kept (words)")
    p.add_argument("--vocab-size", type=int, default=700,
                   help="keep sentences made of the pool's N most frequent words (0: no restriction)")
    p.add_argument("--train-voices", nargs="+", default=["wide"],
                   help=f"espeak-ng voices for train/heldout, or one of the sets {sorted(TRAIN_VOICE_SETS)} "
                        f"(voices.py; wide: {len(TRAIN_VOICES)} voices since 2026-12-05, narrow: 28 before)")
    p.add_argument("--test-voices", nargs="+", default=TEST_VOICES, help="espeak-ng voices for test")
    p.add_argument("--dev-voices", nargs="+", default=DEV_VOICES,
                   help="espeak-ng voices for dev (none of --train-voices or --test-voices)")
    p.add_argument("--speed", type=int, nargs=2, default=[130, 200], metavar=("MIN", "MAX"),
                   help="speaking rate range, words per minute (uniform integer)")
    p.add_argument("--pitch", type=int, nargs=2, default=[30, 70], metavar=("MIN", "MAX"),
                   help="pitch range 0-99 (uniform integer)")
    p.add_argument("--wordnet-dir", default=WORDNET_DIR, help="WordNet data.* folder (wordnet-base)")
    p.add_argument("--fortune-dir", default=FORTUNE_DIR, help="fortune files folder (fortunes)")
    p.add_argument("--bible-cmd", default="bible", help="the bible-kjv program")
    p.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable")
    p.add_argument("--sox", default="sox", help="sox executable")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def cli_main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    for name in ("n_train", "n_heldout", "n_test", "n_dev"):
        if (getattr(args, name) or 0) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0")
    if args.train_readings < 1:
        raise SystemExit(f"--train-readings must be >= 1 (got {args.train_readings})")
    prepare(args)


if __name__ == "__main__":
    cli_main(sys.argv[1:])
