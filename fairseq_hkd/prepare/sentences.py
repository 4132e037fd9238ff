"""English sentence pool for the synthesized corpus, from texts shipped by Debian packages.

Sources (all offline, see examples/synth/README.md for licences):
- ``wordnet``: usage examples (the quoted strings in the glosses) of WordNet 3.0's
  ``/usr/share/wordnet/data.{noun,verb,adj,adv}`` (package wordnet-base);
- ``fortunes``: the sentences of ``/usr/share/games/fortunes/*`` (package fortunes), attribution
  lines ("-- Author") dropped;
- ``bible``: clauses (split at ; : . ? ! and parentheses, not at commas) of the King James Bible as printed by
  ``bible -f Gen1:1-Rev22:21`` (packages bible-kjv, bible-kjv-text).

Every sentence is normalised to ``[a-z' ]`` (lower case; . , ; : ! ? " ( ) [ ] ` _ * / - become
spaces; apostrophes kept inside words only) and rejected when anything else is left (digits, &,
non-ASCII letters: espeak-ng would read them in ways the transcript does not say). Sentences of
``min_words..max_words`` words are candidates; the vocabulary is restricted to the candidates'
``vocab_size`` most frequent words (each distinct sentence counted once, ties broken
alphabetically) and only sentences made entirely of those words are kept.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

logger = logging.getLogger(__name__)

SOURCES = ("wordnet", "fortunes", "bible")
WORDNET_DIR = "/usr/share/wordnet"
FORTUNE_DIR = "/usr/share/games/fortunes"
DEBIAN_PACKAGES = {"wordnet": "wordnet-base", "fortunes": "fortunes", "bible": "bible-kjv"}

_TO_SPACE = re.compile(r"[.,;:!?\"()\[\]`_*/\-]")
_NOT_ALLOWED = re.compile(r"[^a-z' ]")


def normalize(text: str) -> Optional[str]:
    """Lower-case ``text`` and map it to ``[a-z' ]`` words; None when other characters remain."""
    text = _TO_SPACE.sub(" ", text.lower())
    if _NOT_ALLOWED.search(text):
        return None
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def wordnet_examples(text: str) -> List[str]:
    """Usage examples from the text of one WordNet ``data.*`` file (licence header skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("  ") or " | " not in line:  # licence header lines start with 2 spaces
            continue
        out.extend(re.findall(r'"([^"]+)"', line.partition(" | ")[2]))
    return out


def fortune_sentences(text: str) -> List[str]:
    """Sentences of one fortune file (fortunes separated by ``%`` lines, attributions dropped)."""
    out = []
    for fortune in re.split(r"^%\s*$", text, flags=re.M):
        lines = [ln for ln in fortune.splitlines() if not ln.strip().startswith("--")]
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(lines)) if s.strip())
    return out


def bible_clauses(text: str) -> List[str]:
    """Clauses of ``bible -f`` output (one verse a line, ``Ge1:1 In the beginning ...``)."""
    out = []
    for line in text.splitlines():
        _, _, verse = line.partition(" ")
        out.extend(c.strip() for c in re.split(r"[.;:?!()]", verse) if c.strip())
    return out


def read_wordnet(wordnet_dir: str = WORDNET_DIR) -> List[str]:
    paths = [os.path.join(wordnet_dir, f"data.{pos}") for pos in ("noun", "verb", "adj", "adv")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: install the Debian package wordnet-base "
                                "(apt-get install wordnet-base) or drop 'wordnet' from --sources")
    out = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.extend(wordnet_examples(f.read()))
    return out


def read_fortunes(fortune_dir: str = FORTUNE_DIR) -> List[str]:
    """All fortune files directly in ``fortune_dir`` (not .dat/.u8 indexes, not the off/ folder)."""
    paths = sorted(p for p in glob.glob(os.path.join(fortune_dir, "*"))
                   if os.path.isfile(p) and "." not in os.path.basename(p))
    if not paths:
        raise FileNotFoundError(f"no fortune files in {fortune_dir}: install the Debian package fortunes "
                                "(apt-get install fortunes) or drop 'fortunes' from --sources")
    out = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.extend(fortune_sentences(f.read()))
    return out


def read_bible(bible_cmd: str = "bible") -> List[str]:
    if shutil.which(bible_cmd) is None:
        raise FileNotFoundError(f"'{bible_cmd}' not found: install the Debian package bible-kjv "
                                "(apt-get install bible-kjv) or drop 'bible' from --sources")
    proc = subprocess.run([bible_cmd, "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"'{bible_cmd} -f Gen1:1-Rev22:21' failed (rc {proc.returncode}): "
                           f"{proc.stderr.strip()[:200]}")
    return bible_clauses(proc.stdout)


@dataclass
class Pool:
    """Kept sentences (sorted) with the source each came from, and the statistics of the filter."""

    sentences: List[str]
    source: Dict[str, str]
    vocab: List[str]
    stats: Dict[str, int]


def build_pool(raw: Dict[str, Iterable[str]], min_words: int = 4, max_words: int = 12,
               vocab_size: int = 700) -> Pool:
    """Normalise, length-filter, deduplicate and vocabulary-restrict the raw sentences by source.

    ``raw`` maps a source name to its sentences (in a fixed order); a sentence found in several
    sources is credited to the first. ``vocab_size <= 0`` keeps every word.
    """
    source: Dict[str, str] = {}
    stats: Dict[str, int] = {}
    for name, sents in raw.items():
        n_raw = n_ok = 0
        for s in sents:
            n_raw += 1
            norm = normalize(s)
            if norm is None or not (min_words <= len(norm.split()) <= max_words):
                continue
            n_ok += 1
            source.setdefault(norm, name)
        stats[f"{name} raw"] = n_raw
        stats[f"{name} candidates"] = n_ok
    counts = Counter(w for s in source for w in s.split())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [w for w, _ in (ranked[:vocab_size] if vocab_size > 0 else ranked)]
    allowed = set(vocab)
    kept = sorted(s for s in source if all(w in allowed for w in s.split()))
    stats["distinct candidates"] = len(source)
    stats["candidate word types"] = len(counts)
    stats["kept"] = len(kept)
    for name in raw:
        stats[f"{name} kept"] = sum(1 for s in kept if source[s] == name)
    stats["kept word types"] = len({w for s in kept for w in s.split()})
    return Pool(kept, {s: source[s] for s in kept}, vocab, stats)


def read_sources(sources: Sequence[str], wordnet_dir: str = WORDNET_DIR, fortune_dir: str = FORTUNE_DIR,
                 bible_cmd: str = "bible") -> Dict[str, List[str]]:
    readers = {"wordnet": lambda: read_wordnet(wordnet_dir), "fortunes": lambda: read_fortunes(fortune_dir),
               "bible": lambda: read_bible(bible_cmd)}
    unknown = [s for s in sources if s not in readers]
    if unknown:
        raise ValueError(f"unknown sentence source(s) {unknown}; choose from {list(readers)}")
    return {s: readers[s]() for s in sources}


def read_sentence_file(path: str) -> Dict[str, List[str]]:
    """One sentence a line from a user file (the ``--sentences`` alternative to Debian sources)."""
    with open(path, encoding="utf-8") as f:
        return {os.path.basename(path): [ln.strip() for ln in f if ln.strip()]}
