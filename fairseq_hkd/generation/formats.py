"""Output formats of the transcriber (writers) and their readers (for tests and downstream tools).

Torch-free (stdlib), shared by ``fairseq-hkd-transcribe`` and the ONNX runtime.

=========  ====================================================  ===================================
format     one file (``--output-dir DIR``: ``DIR/ID.EXT``)         one stream (stdout / ``--output``)
=========  ====================================================  ===================================
text       the text, one line                                    one line per file, input order
tsv        ``ID<TAB>TEXT[<TAB>SYMBOL:TIME ...]``                   one line per file
json       an object (below)                                     JSON Lines: one object per line
srt, vtt   subtitles: cues from the segments, split at words     only for a single input file
=========  ====================================================  ===================================

JSON object: ``id, audio, duration, text, score, n_fires, segments`` (and ``reference`` with a
manifest); each segment ``start, end, text, score, tokens, words``; each token
``{"symbol", "time", "score", "start", "end"}`` (``time``: the fire; ``start``/``end``: the audio whose CIF
weight the token integrated, generation/token_spans.py), each word ``{"text", "start", "end", "probability"}``
(from its first token's start to its last token's end; the product of its tokens' probabilities under the
search, a confidence: BENCHMARKS.md "Word times"). Times in seconds (3 decimals), scores natural-log
probabilities (4 decimals).

Subtitle cues: the words of one segment, a new cue when the text would pass ``max_chars`` or the
cue ``max_seconds``; a cue starts at its segment's start (first cue) or halfway between the previous
word and its first word, and ends where the next cue starts or at the segment's end; text longer
than ``line_chars`` is wrapped onto two lines at the word nearest the middle.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import IO, List, Optional, Tuple

from fairseq_hkd.generation.results import Segment, Transcript, join_texts

__all__ = ["FORMATS", "EXTENSIONS", "Cue", "to_dict", "render", "subtitle_cues", "OutputWriter",
           "read_text", "read_tsv", "read_json", "read_subtitles"]

FORMATS = ("text", "tsv", "json", "srt", "vtt")
EXTENSIONS = {"text": "txt", "tsv": "tsv", "json": "json", "srt": "srt", "vtt": "vtt"}
SUBTITLES = ("srt", "vtt")


@dataclass
class Cue:
    start: float
    end: float
    text: str


# ---------------------------------------------------------------------- writers
def to_dict(t: Transcript) -> dict:
    """The JSON object of one file."""
    d = {"id": t.utt_id, "audio": t.audio, "duration": round(t.duration, 3), "text": t.text,
         "score": round(t.score, 4), "n_fires": t.n_fires}
    if t.reference is not None:
        d["reference"] = t.reference
    d["segments"] = [_segment_dict(s) for s in t.segments]
    return d


def _segment_dict(s: Segment) -> dict:
    tokens = [{"symbol": x, "time": round(tm, 3), "score": round(sc, 4)}
              for x, tm, sc in zip(s.symbols, s.token_times, s.token_scores)]
    for tok, (a, b) in zip(tokens, s.token_spans):
        tok.update(start=round(a, 3), end=round(b, 3))
    return {
        "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text, "score": round(s.score, 4),
        "tokens": tokens,
        "words": [_word_dict(w) for w in s.words],
    }


def _word_dict(w) -> dict:
    d = {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
    if w.score is not None:
        d["probability"] = round(w.probability, 4)
    return d


def subtitle_cues(t: Transcript, max_chars: int = 84, max_seconds: float = 7.0) -> List[Cue]:
    """Cues of a transcript, in time order, not overlapping."""
    cues: List[Cue] = []
    for seg in t.segments:
        groups: List[list] = []
        for w in seg.words:
            if groups:
                g = groups[-1]
                text = join_texts([x.text for x in g] + [w.text])
                if len(text) <= max_chars and w.end - g[0].start <= max_seconds:
                    g.append(w)
                    continue
            groups.append([w])
        for k, g in enumerate(groups):
            start = seg.start if k == 0 else (groups[k - 1][-1].end + g[0].start) / 2
            end = seg.end if k == len(groups) - 1 else (g[-1].end + groups[k + 1][0].start) / 2
            if cues:
                start = max(start, cues[-1].end)
            cues.append(Cue(start, max(end, start + 0.001), join_texts([w.text for w in g])))
    return cues


def _wrap(text: str, line_chars: int) -> str:
    """Two lines, cut at the space nearest the middle, when longer than ``line_chars``."""
    if len(text) <= line_chars:
        return text
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return text[:cut] + "\n" + text[cut + 1:]


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render_subtitles(cues: List[Cue], fmt: str, line_chars: int = 42) -> str:
    """SRT (numbered, ``,`` before milliseconds) or WebVTT (``WEBVTT`` header, ``.``)."""
    sep = "," if fmt == "srt" else "."
    blocks = [] if fmt == "srt" else ["WEBVTT\n"]
    for i, c in enumerate(cues, start=1):
        head = f"{i}\n" if fmt == "srt" else ""
        blocks.append(f"{head}{_timestamp(c.start, sep)} --> {_timestamp(c.end, sep)}\n{_wrap(c.text, line_chars)}\n")
    return "\n".join(blocks)


def render(t: Transcript, fmt: str, timestamps: bool = False, stream: bool = False) -> str:
    """One file's output, newline-terminated. ``stream``: as a line of a multi-file stream (JSON Lines)."""
    if fmt == "text":
        return t.text + "\n"
    if fmt == "tsv":
        return t.line(timestamps) + "\n"
    if fmt == "json":
        return json.dumps(to_dict(t), ensure_ascii=False, indent=None if stream else 1) + "\n"
    if fmt in SUBTITLES:
        return render_subtitles(subtitle_cues(t), fmt)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


class OutputWriter:
    """Writes results one by one: to ``DIR/ID.EXT`` per file (``output_dir``) or to one stream."""

    def __init__(self, fmt: str, output_dir: Optional[str] = None, stream: Optional[IO[str]] = None,
                 timestamps: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
        self.fmt, self.output_dir, self.stream, self.timestamps = fmt, output_dir, stream, timestamps
        self.paths: List[str] = []

    def path_for(self, utt_id: str) -> str:
        """``DIR/ID.EXT`` (an id ``sub/a`` of a folder input keeps its sub-folder)."""
        safe = "/".join(re.sub(r"[^\w.\-]", "_", part) or "_" for part in utt_id.split("/") if part not in ("", ".", ".."))
        return os.path.join(self.output_dir, f"{safe}.{EXTENSIONS[self.fmt]}")

    def write(self, t: Transcript) -> None:
        if self.output_dir is not None:
            path = self.path_for(t.utt_id)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(render(t, self.fmt, self.timestamps))
            self.paths.append(path)
        else:
            self.stream.write(render(t, self.fmt, self.timestamps, stream=True))
            self.stream.flush()


# ---------------------------------------------------------------------- readers
def read_text(text: str) -> List[str]:
    """text format -> one transcript per line."""
    return text.splitlines()


def read_tsv(text: str) -> List[Tuple[str, str, Optional[List[Tuple[str, float]]]]]:
    """tsv -> (id, text, [(symbol, time), ...] or None) per line (a symbol may contain ':')."""
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        stamps = None
        if len(fields) > 2:
            stamps = [(s, float(tm)) for s, tm in (x.rsplit(":", 1) for x in fields[2].split(" ") if x)]
        out.append((fields[0], fields[1], stamps))
    return out


def read_json(text: str) -> List[dict]:
    """One JSON object (a per-file output) or JSON Lines (a stream) -> the objects."""
    text = text.strip()
    try:
        obj = json.loads(text)
        return [obj]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


_CUE_TIME = re.compile(r"^(\d+):(\d\d):(\d\d)[,.](\d{3}) --> (\d+):(\d\d):(\d\d)[,.](\d{3})")


def read_subtitles(text: str) -> List[Cue]:
    """SRT or WebVTT -> cues (wrapped lines joined back)."""
    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            m = _CUE_TIME.match(line)
            if m:
                v = [int(x) for x in m.groups()]
                start = v[0] * 3600 + v[1] * 60 + v[2] + v[3] / 1000
                end = v[4] * 3600 + v[5] * 60 + v[6] + v[7] / 1000
                cues.append(Cue(start, end, join_texts(lines[i + 1:])))
                break
    return cues
