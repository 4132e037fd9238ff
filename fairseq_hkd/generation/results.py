"""What transcribing one file gives: a :class:`Transcript` (segments, words, tokens) or a :class:`FileError`.

Torch-free (stdlib only), shared by ``fairseq-hkd-transcribe`` and the ONNX runtime. Times are
seconds from the start of the original file; a token's time is the centre of the encoder frame
whose CIF weight completed it (see transcribe.py), its span the stretch of audio whose weight it integrated
(token_spans.py), a word's ``start``/``end`` the start of its first token's span and the end of its last's
(the times of its first and last tokens where no spans are known), a segment's ``start``/``end`` the span
of audio that was decoded.
Scores are natural-log probabilities of the decoder (per token: the chosen unit's log-probability,
the beam's positional score; per file: the sum over segments of the hypothesis scores, ``</s>``
included).
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

__all__ = ["Word", "Segment", "Transcript", "FileError", "word_spans", "join_texts"]

WORD_SEP = "|"  # char units: the word separator symbol (data/units.py)
WORDPIECE_CONT = "##"
SPM_WORD_START = "\u2581"


@dataclass
class Word:
    """``score``: the sum of its tokens' log-probabilities (None where unknown); ``probability`` = exp(score)."""

    text: str
    start: float
    end: float
    score: Optional[float] = None

    @property
    def probability(self) -> Optional[float]:
        return None if self.score is None else math.exp(self.score)


@dataclass
class Segment:
    """One decoded stretch of a file: ``symbols`` [N], ``token_times`` [N], ``token_scores`` [N], ``token_spans``
    [N] (the stretch of audio whose CIF weight each token integrated, generation/token_spans.py)."""

    start: float
    end: float
    text: str
    symbols: List[str]
    token_times: List[float]
    token_scores: List[float]
    score: float
    words: List[Word] = field(default_factory=list)
    token_spans: List[Tuple[float, float]] = field(default_factory=list)  # [N] (start, end), empty: unknown


@dataclass
class Transcript:
    """One file's result.

    symbols / token_times / token_scores: all segments' tokens in order ([N] each, without </s>);
    n_fires: CIF tokens (fires + tail) over all segments, the number of decoder steps;
    reference: the manifest transcript as scored (``Units.normalise``), None without one;
    segments: the stretches decoded (one for a file decoded whole).
    """

    utt_id: str
    audio: str
    text: str
    symbols: List[str]
    score: float
    duration: float
    n_fires: int
    token_times: Optional[List[float]] = None
    reference: Optional[str] = None
    plot: Optional[str] = None
    token_scores: List[float] = field(default_factory=list)
    segments: List[Segment] = field(default_factory=list)

    ok = True

    def line(self, timestamps: Optional[bool] = None) -> str:
        """``ID<TAB>TEXT[<TAB>SYMBOL:TIME ...]`` (times with ``timestamps``; default: when known)."""
        fields = [self.utt_id, self.text]
        if timestamps is None:
            timestamps = self.token_times is not None
        if timestamps:
            fields.append(" ".join(f"{s}:{t:.2f}" for s, t in zip(self.symbols, self.token_times or [])))
        return "\t".join(fields)

    @property
    def words(self) -> List[Word]:
        return [w for s in self.segments for w in s.words]


@dataclass
class FileError:
    """A file that could not be transcribed (unreadable, empty, too short): ``reason`` is one line."""

    utt_id: str
    audio: str
    reason: str

    ok = False

    def line(self) -> str:
        """The reason, prefixed with the file's path unless it already names it."""
        return self.reason if self.audio in self.reason else f"{self.audio}: {self.reason}"


def word_spans(symbols: Sequence[str], unit: str) -> List[Tuple[int, int]]:
    """Token index ranges ``[(a, b), ...]`` of the words in ``symbols`` (separators excluded).

    char: words end at ``|``, and a CJK character is a word of its own; wordpiece: a ``##`` piece
    continues the previous word; word: every unit is a word; spm: a piece starting with ``\u2581`` starts a word.
    """
    spans: List[Tuple[int, int]] = []
    start = None
    for i, s in enumerate(symbols):
        if unit == "char" and s == WORD_SEP:
            if start is not None:
                spans.append((start, i))
            start = None
            continue
        new_word = (
            start is None
            or unit == "word"
            or (unit == "wordpiece" and not s.startswith(WORDPIECE_CONT))
            or (unit == "spm" and s.startswith(SPM_WORD_START))
            or (unit == "char" and (_is_cjk(s) or _is_cjk(symbols[i - 1])))
        )
        if new_word:
            if start is not None:
                spans.append((start, i))
            start = i
    if start is not None:
        spans.append((start, len(symbols)))
    return spans


def _is_cjk(text: str) -> bool:
    """True for a wide (East Asian) character, whose script writes no spaces between words."""
    return len(text) == 1 and unicodedata.east_asian_width(text) in ("W", "F")


def join_texts(texts: Sequence[str]) -> str:
    """Segment texts -> one text: joined by a space, except between two CJK characters."""
    out = ""
    for t in texts:
        t = t.strip()
        if not t:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(t[0])):
            out += " "
        out += t
    return out
