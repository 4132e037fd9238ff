"""Text <-> ASR unit symbols: characters, PLM WordPiece tokens, whole words or sentencepiece pieces.

One ``Units`` object per task. ``encode(text) -> list[str]`` gives the symbols that index
``dict.txt``; ``decode(symbols) -> str`` turns them back into words (what fairseq-generate prints and
WER scores); ``normalise(text)`` is the text as the units see it (what references are scored as:
``decode(encode(t)) == normalise(t)``, for WordPiece within the rules of data/wordpiece_join.py).
``fingerprint()`` identifies the inventory so a teacher store built with other units is caught
(see docs/DESIGN.md, "Teacher store hook").

Unknown units decode to one character each, so CER/WER count them once: the dictionary's ``<unk>``
(a hypothesis) -> ``⁇`` (U+2047, sentencepiece's), fairseq's escaped ``<<unk>>`` (a reference
unit not in dict.txt; fairseq-generate's T- line) -> ``\ufffd`` (U+FFFD). They differ on purpose, as
fairseq's escaping intends: an unknown hypothesis unit never matches an unknown reference unit,
so fairseq-generate scores as if the reference held its real character (as
``fairseq-hkd-transcribe --manifest`` does, which scores against the normalised manifest text).

- ``char``: every character is a unit; a space is written ``|`` (English). Chinese has no spaces.
- ``wordpiece``: the tokens of a local PLM tokenizer (``transformers.AutoTokenizer`` with
  ``local_files_only=True``; nothing is downloaded), written as the tokenizer writes them
  (``play``, ``##ing``).
- ``word``: the whitespace-separated words of the transcript as the PLM tokenizer normalises it
  (BERT uncased: lower case, accents stripped; ``it's`` is one word, three WordPieces). Needs
  ``--tokenizer-dir`` like ``wordpiece``; the teacher state of a word is the mean of its WordPieces'
  states (teacher/align.py). One unit per spoken word: no contraction or ``##`` piece to count.
  For closed-vocabulary corpora (the synthesized demo's 700 words); open vocabularies want pieces.
- ``spm``: pieces of a sentencepiece model (``▁`` marks word starts).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_hkd.data.wordpiece_join import join_wordpieces
from fairseq_hkd.errors import UserError

UNIT_TYPES = ("char", "wordpiece", "word", "spm")
PLM_NORMALISED = ("wordpiece", "word")  # units that see the text through the PLM tokenizer's normaliser
WORD_SEP = "|"  # char units: the symbol that stands for a space
SPM_WORD_START = "\u2581"  # ▁
HYP_UNK, REF_UNK = "\u2047", "\ufffd"  # ⁇ for <unk>, � for fairseq's escaped <<unk>>
_UNK_TEXT = {"<unk>": HYP_UNK, "<<unk>>": REF_UNK}

# Files that identify a tokenizer (hashed into the fingerprint when present).
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "spiece.model", "sentencepiece.bpe.model")


def file_sha1(path: str | os.PathLike, n: int = 12) -> str:
    """First ``n`` hex digits of the SHA-1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def decode_units(unit: str, symbols: Sequence[str]) -> str:
    """:meth:`Units.decode` without a ``Units`` object (no tokenizer or sentencepiece model is
    needed to decode): what the ONNX runtime uses."""
    symbols = [_UNK_TEXT.get(s, s) for s in symbols]
    if unit == "char":
        text = "".join(" " if s == WORD_SEP else s for s in symbols)
    elif unit == "wordpiece":
        text = join_wordpieces(symbols)
    elif unit == "word":
        text = " ".join(symbols)
    elif unit == "spm":
        text = "".join(symbols).replace(SPM_WORD_START, " ")
    else:
        raise UserError(f"unknown unit {unit!r}: choose one of {', '.join(UNIT_TYPES)}")
    return " ".join(text.split())


class Units:
    """Unit inventory used to turn transcripts into dictionary symbols and back.

    Args:
        unit: ``char`` | ``wordpiece`` | ``word`` | ``spm``.
        dict_path: the ASR ``dict.txt`` (only hashed into the fingerprint).
        tokenizer_dir: local PLM tokenizer directory (``wordpiece``, ``word``).
        spm_model: sentencepiece ``.model`` file (``spm``).
        lowercase: lowercase text before encoding (``char`` / ``spm``; the WordPiece tokenizer
            applies its own normalisation).
    """

    def __init__(
        self,
        unit: str = "char",
        dict_path: Optional[str] = None,
        tokenizer_dir: Optional[str] = None,
        spm_model: Optional[str] = None,
        lowercase: bool = False,
    ):
        unit = str(unit)  # fairseq passes a ChoiceEnum member
        if unit not in UNIT_TYPES:
            raise UserError(f"unknown unit {unit!r}: choose one of {', '.join(UNIT_TYPES)}")
        self.unit = unit
        self.dict_path = dict_path
        self.tokenizer_dir = tokenizer_dir
        self.spm_model = spm_model
        self.lowercase = lowercase
        self._tokenizer = None
        self._sp = None
        if unit in PLM_NORMALISED:
            if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
                raise UserError(
                    f"--unit {unit} needs --tokenizer-dir pointing to a local PLM tokenizer "
                    f"directory (got {tokenizer_dir!r})"
                )
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        elif unit == "spm":
            if not spm_model or not Path(spm_model).is_file():
                raise UserError(f"--unit spm needs --spm-model pointing to a .model file (got {spm_model!r})")
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(spm_model))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> List[str]:
        """Transcript -> unit symbols (no ``</s>``)."""
        text = " ".join(text.split())  # collapse whitespace runs, strip ends
        if self.unit == "char":
            if self.lowercase:
                text = text.lower()
            return [WORD_SEP if c == " " else c for c in text]
        if self.unit == "wordpiece":
            return list(self._tokenizer.tokenize(text))
        if self.unit == "word":
            return self.normalise(text).split()
        if self.lowercase:
            text = text.lower()
        return list(self._sp.encode(text, out_type=str))

    def normalise(self, text: str) -> str:
        """Text as the units see it, single-spaced: ``char`` lower-cased with ``lowercase``; ``spm`` the
        same, then the model's normaliser (NFKC by default); ``wordpiece`` the tokenizer's own
        normaliser (BERT uncased: lower case, accents stripped, control characters dropped, spaces
        around CJK characters)."""
        if self.unit in PLM_NORMALISED:
            norm = getattr(getattr(self._tokenizer, "backend_tokenizer", None), "normalizer", None)
            if norm is not None:
                text = norm.normalize_str(text)
            elif getattr(self._tokenizer, "do_lower_case", False):
                text = text.lower()
        elif self.lowercase:
            text = text.lower()
        if self.unit == "spm":
            text = self._sp.normalize(text).replace(SPM_WORD_START, " ")
        return " ".join(text.split())

    def decode(self, symbols: Sequence[str]) -> str:
        """Unit symbols -> words (single spaces, no leading/trailing space); ``<unk>`` -> ``⁇``,
        ``<<unk>>`` -> ``\ufffd`` (one character each; a separate word for WordPiece)."""
        return decode_units(self.unit, symbols)

    def decode_string(self, line: str) -> str:
        """A space-separated symbol string (``Dictionary.string`` output) -> words."""
        return self.decode(line.split())

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> Dict[str, str]:
        """What identifies this inventory: unit type, tokenizer / spm model identity, dict hash."""
        fp = {"unit": self.unit}
        if self.unit in PLM_NORMALISED:
            d = Path(self.tokenizer_dir)
            fp["tokenizer"] = type(self._tokenizer).__name__
            for name in _TOKENIZER_FILES:
                if (d / name).is_file():
                    fp[f"tokenizer_{name}"] = file_sha1(d / name)
        elif self.unit == "spm":
            fp["spm_model"] = file_sha1(self.spm_model)
        else:
            fp["lowercase"] = str(self.lowercase)
        if self.dict_path and Path(self.dict_path).is_file():
            fp["dict"] = file_sha1(self.dict_path)
        return fp


class UnitsDecoder:
    """What ``CifAsrTask.build_bpe`` returns: fairseq-generate calls ``decode`` on the
    space-separated symbol strings of hypotheses and references so they print (and score) as words."""

    def __init__(self, units: Units):
        self.units = units

    def encode(self, x: str) -> str:
        return " ".join(self.units.encode(x))

    def decode(self, x: str) -> str:
        return self.units.decode_string(x)
