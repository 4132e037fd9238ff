"""Memory-mapped teacher store: the PLM hidden states of every transcript of one split.

The teacher states are a fixed function of the transcript, so they are computed once
(``fairseq-hkd-extract-teacher``) and read during training. One split's store is three files
next to the manifest (or under ``--teacher-dir``)::

    {split}.teacher.npy         float16 | float32 array [R, D], all utterances' rows concatenated
    {split}.teacher.index.tsv   utt_id <TAB> first row <TAB> number of rows (S, incl. </s>) <TAB> transcript hash
    {split}.teacher.json        fingerprint: PLM, tokenizer, layer, dtype, units, transcripts, sizes,
                                extraction arguments

Utterance ``u`` owns rows ``[offset, offset + S)``; row ``j < S - 1`` is the teacher state of ASR
unit ``j`` and row ``S - 1`` the PLM's [SEP] state, which pairs with ``</s>`` (see ``align.py``).

The writer fills ``*.tmp`` files and renames them when complete, fingerprint last, so an
interrupted extraction never leaves a store that opens. The reader checks the array size
against the index (truncated or replaced files), and ``TeacherStore.check`` compares the store
with the dataset it is used with: every utterance present, lengths equal to the target lengths,
the same ASR unit inventory and, given the transcripts, the same text per utterance (the index holds
the hash of the transcript each utterance's states were computed from: a corrected word with the same
token count would otherwise train against the old sentence). Every error names the utterance or file
and the fix; an utterance's error names its manifest line and the command that rebuilds the store.

Format 1 stores (before per-utterance hashes) are still read. ``check`` with transcripts accepts one
only when the fingerprint's split-level ``transcripts_sha1`` equals the hash of the given manifest
(same ids, transcripts and order: nothing changed since extraction); otherwise it raises, since
the changed utterances cannot be found without the hashes, with the command that rebuilds the store.
"""
import json
import logging
import os
import shlex
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fairseq_hkd.teacher.fingerprint import transcript_sha1, transcripts_sha1

logger = logging.getLogger(__name__)

__all__ = ["TeacherStore", "TeacherStoreWriter", "open_teacher_store", "store_paths"]

FORMAT_VERSION = 2  # 2: the index's 4th column holds each utterance's transcript hash ("-": none given)
READ_VERSIONS = (1, 2)  # 1: utt_id, first row, S (no transcript hashes)
_EXTRACT_HINT = "re-run fairseq-hkd-extract-teacher for this split"
_NO_HASH = "-"


def store_paths(teacher_dir: str, split: str) -> Dict[str, str]:
    """Paths of one split's store files: keys ``array``, ``index``, ``fingerprint``."""
    stem = os.path.join(teacher_dir, f"{split}.teacher")
    return {"array": stem + ".npy", "index": stem + ".index.tsv", "fingerprint": stem + ".json"}


def _diff_keys(expected: dict, found: dict, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two (nested) fingerprint dicts."""
    keys = []
    for k in sorted(set(expected) | set(found)):
        a, b = expected.get(k), found.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff_keys(a, b, prefix + k + ".")
        elif a != b:
            keys.append(f"{prefix}{k} (store: {b!r}, expected: {a!r})")
    return keys


class TeacherStore:
    """Read side of a split's teacher store (memory-mapped; rows are copied only by ``get``).

    Attributes: ``dim`` (D), ``fingerprint`` (dict), ``array`` (np.memmap [R, D]),
    ``utt_ids`` (list in file order).
    """

    def __init__(self, teacher_dir: str, split: str):
        self.paths = store_paths(teacher_dir, split)
        self.split = split
        with open(self.paths["fingerprint"], encoding="utf-8") as f:
            self.fingerprint: dict = json.load(f)
        self.format_version = self.fingerprint.get("format_version")
        if self.format_version not in READ_VERSIONS:
            raise ValueError(
                f"{self.paths['fingerprint']}: store format version {self.format_version!r}, this code reads "
                f"{', '.join(map(str, READ_VERSIONS))}; {_EXTRACT_HINT}"
            )
        self._index: Dict[str, Tuple[int, int]] = {}
        self._text_sha1: Dict[str, Optional[str]] = {}  # utt -> transcript hash (None: not recorded)
        self.utt_ids: List[str] = []
        self._read_index()
        self.array = self._open_array()
        self.dim = int(self.array.shape[1])

    def _read_index(self) -> None:
        path = self.paths["index"]
        columns = "utt_id<TAB>offset<TAB>length" + ("<TAB>transcript_sha1" if self.format_version >= 2 else "")
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != columns.count("<TAB>") + 1:
                    raise ValueError(f"{path}:{lineno}: expected '{columns}', got {line!r}; {_EXTRACT_HINT}")
                utt, off, n = parts[0], int(parts[1]), int(parts[2])
                if utt in self._index:
                    raise ValueError(f"{path}:{lineno}: duplicate utterance id {utt!r}; {_EXTRACT_HINT}")
                self._index[utt] = (off, n)
                self._text_sha1[utt] = parts[3] if len(parts) > 3 and parts[3] != _NO_HASH else None
                self.utt_ids.append(utt)

    def _open_array(self) -> np.ndarray:
        path, fp = self.paths["array"], self.fingerprint
        rows_needed = max((o + n for o, n in self._index.values()), default=0)
        # Read the header first: np.load(mmap_mode) on a truncated file fails with an opaque mmap error.
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            header_end = f.tell()
        expected_bytes = header_end + int(np.prod(shape)) * dtype.itemsize
        actual = os.path.getsize(path)
        if actual != expected_bytes:
            raise ValueError(
                f"{path}: file has {actual} bytes, its header [{shape}, {dtype}] needs {expected_bytes} "
                f"(truncated or partially copied); {_EXTRACT_HINT} or copy the file again"
            )
        if len(shape) != 2 or shape[0] != rows_needed or shape[0] != fp.get("num_rows") or shape[1] != fp.get("dim"):
            raise ValueError(
                f"{path}: array shape {shape} does not match the index ({rows_needed} rows) and "
                f"fingerprint (rows {fp.get('num_rows')}, dim {fp.get('dim')}): files from different "
                f"extractions; {_EXTRACT_HINT}"
            )
        if str(dtype) != fp.get("dtype"):
            raise ValueError(f"{path}: dtype {dtype}, fingerprint says {fp.get('dtype')}; {_EXTRACT_HINT}")
        return np.load(path, mmap_mode="r")

    def __getstate__(self):
        # Data-loader workers started with spawn pickle the dataset: ship paths, not the rows
        # (pickling a memmap would copy the whole array); the copy maps the file again.
        state = dict(self.__dict__)
        state.pop("array")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = np.load(self.paths["array"], mmap_mode="r")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._index

    @property
    def has_transcript_hashes(self) -> bool:
        """Every utterance's transcript hash is recorded (format 2, written with transcripts)."""
        return all(v is not None for v in self._text_sha1.values())

    def transcript_sha1(self, utt_id: str) -> Optional[str]:
        """Hash of the transcript ``utt_id``'s states were computed from (None when not recorded)."""
        return self._text_sha1[utt_id]

    def rebuild_command(self, manifest: Optional[str] = None) -> str:
        """The ``fairseq-hkd-extract-teacher`` command that rebuilds this store (from ``manifest``,
        default: the manifest it was extracted from); see :func:`rebuild_command`."""
        return rebuild_command(self.fingerprint, os.path.dirname(self.paths["index"]) or ".", self.split, manifest)

    def length(self, utt_id: str) -> int:
        """S of ``utt_id`` (rows, incl. the </s> row)."""
        return self._index[utt_id][1]

    def get(self, utt_id: str) -> np.ndarray:
        """Teacher states of one utterance: [S, D] in the store dtype (a view of the memmap)."""
        try:
            off, n = self._index[utt_id]
        except KeyError:
            raise KeyError(f"utterance {utt_id!r} is not in the teacher store {self.paths['index']}; {_EXTRACT_HINT}") from None
        return self.array[off : off + n]

    def check(
        self,
        utt_ids: Sequence[str],
        target_lengths: Sequence[int],
        units_fingerprint: Optional[dict],
        expected_plm: Optional[dict] = None,
        transcripts: Optional[Sequence[str]] = None,
        locations: Optional[Sequence[str]] = None,
    ) -> None:
        """Raise ValueError unless this store fits the dataset it will be used with.

        utt_ids [N], target_lengths [N] (S incl. </s>), units_fingerprint: ``Units.fingerprint()``
        of the task (None skips that comparison). ``expected_plm``: the ``plm``/``tokenizer``/
        ``layer`` part of another split's fingerprint (e.g. train's when checking valid), so the
        splits of one run share a teacher. ``transcripts`` [N]: the manifest's texts
        (``ManifestEntry.tgt_text``), each compared with the hash of the text its states were
        computed from (None skips that comparison; a store without hashes, see the module doc).
        ``locations`` [N]: ``manifest:line`` of each utterance, named in the errors with the
        command that rebuilds the store.
        """
        fp, where = self.fingerprint, self.paths["fingerprint"]
        # The dictionary hash is left out: teacher states depend on the unit symbols, not their ids
        # (a symbol missing from dict.txt is still one target position), so a rebuilt dict.txt
        # does not force a new extraction; the per-utterance length check below still runs.
        mine_units = {k: v for k, v in (fp.get("units") or {}).items() if k != "dict"}
        want_units = {k: v for k, v in (units_fingerprint or {}).items() if k != "dict"}
        if units_fingerprint is not None and mine_units != want_units:
            diff = "; ".join(_diff_keys(want_units, mine_units))
            raise ValueError(
                f"{where}: the teacher store was extracted for other ASR units ({diff}); "
                f"{_EXTRACT_HINT} with the same --unit/dictionary as training"
            )
        if expected_plm is not None:
            mine = teacher_identity(fp)
            if mine != expected_plm:
                diff = "; ".join(_diff_keys(expected_plm, mine))
                raise ValueError(
                    f"{where}: the teacher store comes from another PLM/tokenizer/layer than the other "
                    f"splits ({diff}); extract every split with the same --plm-dir and --layer"
                )
        for name, seq in (("lengths", target_lengths), ("transcripts", transcripts), ("locations", locations)):
            if seq is not None and len(seq) != len(utt_ids):
                raise ValueError(f"check(): {len(utt_ids)} utterance ids but {len(seq)} {name}")
        manifest = locations[0].rsplit(":", 1)[0] if locations else None
        fix = f"rebuild the store: {self.rebuild_command(manifest)}" if locations else _EXTRACT_HINT
        hashed = transcripts is not None and self.has_transcript_hashes
        for i, (utt, s) in enumerate(zip(utt_ids, target_lengths)):
            where = f"{locations[i]}: " if locations else ""
            entry = self._index.get(utt)
            if entry is None:
                raise ValueError(
                    f"{where}utterance {utt!r} of split {self.split!r} has no teacher states in "
                    f"{self.paths['index']} (store has {len(self)} utterances); {fix}"
                )
            if entry[1] != int(s):
                raise ValueError(
                    f"{where}utterance {utt!r} of split {self.split!r}: teacher store has {entry[1]} states but the "
                    f"target has {int(s)} tokens (incl. </s>): the transcript, units or dictionary changed "
                    f"since extraction; {fix}"
                )
            if hashed and transcript_sha1(transcripts[i]) != self._text_sha1[utt]:
                others = sum(transcript_sha1(t) != self._text_sha1.get(u) for u, t in zip(utt_ids[i + 1:], transcripts[i + 1:]))
                more = f" ({others} more utterances after it changed too)" if others else ""
                raise ValueError(
                    f"{where}utterance {utt!r} of split {self.split!r}: the transcript {_short(transcripts[i])!r} is not the "
                    f"one its teacher states in {self.paths['index']} were computed from (edited since "
                    f"extraction){more}; {fix}"
                )
        if transcripts is not None and not hashed:
            # No per-utterance hashes (format 1 store): only "nothing changed at all" can be verified.
            recorded = self.fingerprint.get("transcripts_sha1")
            if recorded is None or recorded != transcripts_sha1(zip(utt_ids, transcripts)):
                raise ValueError(
                    f"{self.paths['index']}: teacher store without per-utterance transcript hashes (format "
                    f"{self.format_version}, or written without transcripts) and the manifest"
                    f"{' ' + manifest if manifest else ''} no longer has the ids and transcripts it was extracted "
                    f"from, so edited transcripts cannot be found; {fix}"
                )


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def rebuild_command(fingerprint: dict, store_dir: str, split: str, manifest: Optional[str] = None) -> str:
    """The ``fairseq-hkd-extract-teacher`` command line that rebuilds a store, from the extraction
    arguments its fingerprint records (``extract_args``; stores written before they were recorded:
    from the PLM name, units, layer and dtype, with ``--plm-dir`` left for the user to fill in).
    ``manifest`` replaces the recorded manifest (the one the store is checked against)."""
    args = dict(fingerprint.get("extract_args") or {})
    if not args:
        units = fingerprint.get("units") or {}
        args = {"plm_dir": f"<PLM dir of {(fingerprint.get('plm') or {}).get('name', '?')}>",
                "unit": units.get("unit"), "lowercase": units.get("lowercase") in (True, "True"),
                "layer": fingerprint.get("layer"), "dtype": fingerprint.get("dtype"),
                "manifest": os.path.join(store_dir, fingerprint.get("manifest") or f"{split}.tsv")}
    if manifest is not None:
        args["manifest"] = os.path.abspath(manifest)
    args["out_dir"] = os.path.abspath(store_dir)
    args["split"] = split
    parts = ["fairseq-hkd-extract-teacher"]
    for key in ("manifest", "plm_dir", "unit", "tokenizer_dir", "spm_model", "dict_path", "out_dir", "split",
                "layer", "dtype"):
        value = args.get(key)
        if value is None or (key == "split" and os.path.splitext(os.path.basename(args["manifest"]))[0] == value):
            continue
        flag = "--dict" if key == "dict_path" else "--" + key.replace("_", "-")
        parts += [flag, shlex.quote(str(value))]
    if args.get("lowercase"):
        parts.append("--lowercase")
    return " ".join(parts)


def teacher_identity(fingerprint: dict) -> dict:
    """The part of a fingerprint that identifies the teacher itself (PLM, tokenizer, layer, dim)."""
    return {k: fingerprint.get(k) for k in ("plm", "tokenizer", "layer", "dim")}


def open_teacher_store(teacher_dir: str, split: str) -> Optional[TeacherStore]:
    """The split's store under ``teacher_dir``, or None when its fingerprint file doesn't exist.

    A store whose fingerprint exists but whose array/index is missing or damaged raises.
    """
    paths = store_paths(teacher_dir, split)
    if not os.path.exists(paths["fingerprint"]):
        return None
    for key in ("array", "index"):
        if not os.path.exists(paths[key]):
            raise FileNotFoundError(f"{paths[key]} is missing but {paths['fingerprint']} exists; {_EXTRACT_HINT}")
    return TeacherStore(teacher_dir, split)


class TeacherStoreWriter:
    """Write side: rows are written in place into a preallocated memmap, then files are renamed.

    Usage::

        w = TeacherStoreWriter(dir, split, [(utt, S), ...], dim, dtype="float16", fingerprint={...},
                               transcripts={utt: text, ...})
        for utt, states in ...: w.write(utt, states)   # states [S, D], any order
        w.close()                                      # checks all written, renames *.tmp

    ``transcripts``: the text each utterance's states are computed from (its hash goes into the
    index); without them the store cannot be checked against edited transcripts (see the module doc).
    """

    def __init__(
        self,
        teacher_dir: str,
        split: str,
        lengths: Iterable[Tuple[str, int]],
        dim: int,
        dtype: str = "float32",
        fingerprint: Optional[dict] = None,
        transcripts: Optional[Mapping[str, str]] = None,
    ):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"teacher store dtype must be float16 or float32, got {dtype!r}")
        os.makedirs(teacher_dir, exist_ok=True)
        self.paths = store_paths(teacher_dir, split)
        self.offsets: Dict[str, Tuple[int, int]] = {}
        order = []
        rows = 0
        for utt, n in lengths:
            if utt in self.offsets:
                raise ValueError(f"duplicate utterance id {utt!r} in split {split!r}")
            if "\t" in utt or "\n" in utt:
                raise ValueError(f"utterance id {utt!r} contains a tab or newline")
            self.offsets[utt] = (rows, int(n))
            order.append(utt)
            rows += int(n)
        self.order, self.num_rows, self.dim, self.dtype = order, rows, int(dim), dtype
        self.text_sha1 = {u: _NO_HASH for u in order}
        if transcripts is not None:
            missing = [u for u in order if u not in transcripts]
            if missing:
                raise ValueError(f"no transcript given for {len(missing)} utterances, first {missing[0]!r}")
            self.text_sha1 = {u: transcript_sha1(transcripts[u]) for u in order}
        self.fingerprint = dict(fingerprint or {})
        self._written = np.zeros(len(order), dtype=bool)
        self._pos = {u: i for i, u in enumerate(order)}
        self._array = np.lib.format.open_memmap(
            self.paths["array"] + ".tmp", mode="w+", dtype=np.dtype(dtype), shape=(rows, self.dim)
        )

    def write(self, utt_id: str, states: np.ndarray) -> None:
        """Store ``states`` [S, D] (any float dtype; cast to the store dtype) for ``utt_id``."""
        off, n = self.offsets[utt_id]
        if states.shape != (n, self.dim):
            raise ValueError(f"utterance {utt_id!r}: states of shape {tuple(states.shape)}, expected {(n, self.dim)}")
        if not np.isfinite(states).all():
            raise ValueError(f"utterance {utt_id!r}: teacher states contain NaN/inf")
        if self.dtype == "float16" and np.abs(states).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError(f"utterance {utt_id!r}: teacher states overflow float16; extract with --dtype float32")
        self._array[off : off + n] = states
        self._written[self._pos[utt_id]] = True

    def close(self) -> None:
        """Flush, check every utterance was written, then move the files into place."""
        missing = [u for u, w in zip(self.order, self._written) if not w]
        if missing:
            raise ValueError(f"{len(missing)} utterances were never written, first {missing[0]!r}")
        self._array.flush()
        del self._array
        with open(self.paths["index"] + ".tmp", "w", encoding="utf-8") as f:
            for utt in self.order:
                off, n = self.offsets[utt]
                f.write(f"{utt}\t{off}\t{n}\t{self.text_sha1[utt]}\n")
        fp = dict(self.fingerprint)
        fp.update(format_version=FORMAT_VERSION, dim=self.dim, dtype=self.dtype,
                  num_utterances=len(self.order), num_rows=self.num_rows)
        # The old fingerprint goes first so that a crash between renames leaves no openable store.
        if os.path.exists(self.paths["fingerprint"]):
            os.remove(self.paths["fingerprint"])
        os.replace(self.paths["array"] + ".tmp", self.paths["array"])
        os.replace(self.paths["index"] + ".tmp", self.paths["index"])
        with open(self.paths["fingerprint"] + ".tmp", "w", encoding="utf-8") as f:
            json.dump(fp, f, indent=1, sort_keys=True)
        os.replace(self.paths["fingerprint"] + ".tmp", self.paths["fingerprint"])
        self.fingerprint = fp
        logger.info(f"wrote teacher store {self.paths['array']}: {len(self.order)} utterances, "
                    f"{self.num_rows} rows x {self.dim} ({self.dtype})")
