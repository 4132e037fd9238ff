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
the end, the others transcribed). Two inputs with the same id are a usage error
(:class:`InputError`, one line naming both files).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, TextIO

__all__ = ["AudioItem", "InputError", "AUDIO_EXTENSIONS", "collect_inputs", "expand_path", "read_list", "file_id"]

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
    """A usage mistake in the inputs (duplicate ids, an unreadable list or manifest): one line."""


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
    Raises :class:`InputError` for duplicate ids or a missing list file, ``ManifestError`` /
    ``FileNotFoundError`` for a bad manifest."""
    items: List[AudioItem] = []
    if manifest:
        from fairseq_hkd.data.manifest import read_manifest

        items += [AudioItem(e.id, e.audio, e.tgt_text) for e in read_manifest(manifest, check_audio_exists=False)]
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
    seen = {}
    for it in items:
        if it.utt_id in seen:
            raise InputError(f"two inputs share the id {it.utt_id!r} ({seen[it.utt_id]} and {it.audio}); "
                             "rename one of the files or give their folder instead")
        seen[it.utt_id] = it.audio
    return items
