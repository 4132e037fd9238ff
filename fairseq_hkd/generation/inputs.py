"""Which files to transcribe: paths, folders, a manifest, a list file, or a list on stdin.

Torch-free (stdlib + soundfile), shared by ``fairseq-hkd-transcribe`` and the ONNX runtime.

- a file path is taken as given (whatever its extension: libsndfile decides when it is read);
- a folder is searched recursively for files with an extension libsndfile reads
  (:data:`AUDIO_EXTENSIONS`), in sorted order; ids are the paths below the folder without the
  extension (``sub/a`` for ``DIR/sub/a.wav``);
- ``--manifest M.tsv``: its ids, audio paths and transcripts (scored);
- ``--list FILE``: one path (file or folder) a line, ``#`` comments and blank lines skipped,
  relative paths from the current directory; ``-`` reads the list from stdin.

A path that does not exist is not fatal: it becomes an item whose reading fails (one error line at
the end, the others transcribed). Ids stay unique (they name the output files): files whose ids
collide keep their extension (``a.flac``, ``a.ogg``), then, if still equal, become the path as
given (``x/a.wav``, ``y/a.wav``); the same file given twice is transcribed once (a logged, counted
skip). Manifest ids are never renamed.
"""
from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, List, Optional, Sequence, TextIO

__all__ = ["AudioItem", "InputError", "AUDIO_EXTENSIONS", "collect_inputs", "expand_path", "unique_ids", "read_list", "file_id"]

# extensions of libsndfile's formats (soundfile.available_formats() names the formats, not the suffixes);
# a folder search skips .mat (MATLAB files are rarely audio) and .raw (headerless)
_FORMAT_EXTENSIONS = {
    "WAV": ("wav", "wave"), "WAVEX": ("wav",), "RF64": ("rf64",), "W64": ("w64",), "FLAC": ("flac",),
    "OGG": ("ogg", "oga", "opus"), "MP3": ("mp3",), "AIFF": ("aiff", "aif", "aifc"), "AU": ("au", "snd"),
    "CAF": ("caf",), "NIST": ("nist", "sph"), "IRCAM": ("sf",), "VOC": ("voc",), "PAF": ("paf",),
    "SVX": ("8svx", "iff"), "PVF": ("pvf",), "XI": ("xi",), "HTK": ("htk",), "SDS": ("sds",), "AVR": ("avr",),
    "WVE": ("wve",), "MPC2K": ("mpc",), "SD2": ("sd2",), "MAT4": (), "MAT5": (), "RAW": (),
}


def _audio_extensions() -> frozenset:
    import soundfile as sf

    return frozenset(ext for fmt in sf.available_formats() for ext in _FORMAT_EXTENSIONS.get(fmt, (fmt.lower(),)))


AUDIO_EXTENSIONS = _audio_extensions()


class InputError(ValueError):
    """A usage mistake in the inputs (an unreadable list or manifest): one line."""


@dataclass(frozen=True)
class AudioItem:
    utt_id: str
    audio: str
    reference: Optional[str] = None


def file_id(path: str) -> str:
    """The id of a file given by path: its name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def expand_path(path: str) -> List[AudioItem]:
    """A file -> [its item] (also when it does not exist: reading it reports the error);
    a folder -> its audio files, recursively, sorted."""
    if not os.path.isdir(path):
        return [AudioItem(file_id(path), path)]
    items = []
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext[1:].lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                rel = os.path.relpath(os.path.join(root, stem), path)
                items.append(AudioItem(rel.replace(os.sep, "/"), os.path.join(root, name)))
    return items


def read_list(lines: Iterable[str]) -> List[str]:
    """Lines of a list file -> paths (blank lines and ``#`` comments skipped, ends stripped)."""
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def collect_inputs(paths: Sequence[str] = (), manifest: Optional[str] = None, list_file: Optional[str] = None,
                   stdin: Optional[TextIO] = None) -> List[AudioItem]:
    """All inputs in order: manifest entries, then ``paths``, then the list's paths (``list_file``
    ``-``: read from ``stdin``, default ``sys.stdin``). A path ``-`` in ``paths`` also reads stdin.
    Ids are made unique (:func:`unique_ids`). Raises :class:`InputError` for a missing list file,
    ``ManifestError`` / ``FileNotFoundError`` for a bad manifest."""
    items: List[AudioItem] = []
    n_manifest = 0
    if manifest:
        from fairseq_hkd.data.manifest import read_manifest

        items += [AudioItem(e.id, e.audio, e.tgt_text) for e in read_manifest(manifest, check_audio_exists=False)]
        n_manifest = len(items)
    listed: List[str] = []
    for p in paths:
        if p == "-":
            listed += read_list(stdin or sys.stdin)
        else:
            listed.append(p)
    if list_file == "-":
        listed += read_list(stdin or sys.stdin)
    elif list_file:
        if not os.path.isfile(list_file):
            raise InputError(f"--list {list_file}: no such file (one audio path or folder a line; '-' for stdin)")
        with open(list_file, encoding="utf-8") as f:
            listed += read_list(f)
    for p in listed:
        items += expand_path(p)
    return unique_ids(items, n_fixed=n_manifest)


def unique_ids(items: Sequence[AudioItem], n_fixed: int = 0) -> List[AudioItem]:
    """``items`` with unique ids, in order. The first ``n_fixed`` (a manifest's) keep theirs; among
    the others, colliding ids become the id with the file's extension (``sub/a.flac``), then the path
    as given; an audio file given twice (or listed in the manifest too) is kept once (logged). Raises
    :class:`InputError` for an id no rename frees (a file named like a manifest id and given by
    that name); read_manifest has already refused duplicate manifest ids."""
    log = logging.getLogger(__name__)
    out: List[AudioItem] = []
    seen_audio = set()
    for i, it in enumerate(items):
        key = os.path.realpath(it.audio)
        if i >= n_fixed and key in seen_audio:
            log.warning("%s is given more than once: transcribed once", it.audio)
            continue
        seen_audio.add(key)
        out.append(it)

    def collisions(ids: List[str]) -> set:
        return {x for x, c in Counter(ids).items() if c > 1}

    ids = [it.utt_id for it in out]
    renames = (lambda it: it.utt_id + os.path.splitext(it.audio)[1],  # sub/a -> sub/a.flac
               lambda it: os.path.normpath(it.audio).replace(os.sep, "/"))  # the path as given
    for rename in renames:
        clash = collisions(ids)
        if not clash:
            break
        for i in range(n_fixed, len(out)):
            if ids[i] in clash:
                ids[i] = rename(out[i])
    clash = collisions(ids)
    if clash:  # only a path equal to a manifest id, or a path named like another's renamed id
        i = next(i for i in range(n_fixed, len(out)) if ids[i] in clash)
        raise InputError(f"{out[i].audio}: its id {ids[i]!r} is taken by another input; rename the file")
    return [it if it.utt_id == x else replace(it, utt_id=x) for it, x in zip(out, ids)]
