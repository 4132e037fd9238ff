"""Build the ASR ``dict.txt`` from training transcripts, with the units the teacher pairs with.

Usage::

    # English, the paper's setting: the PLM's WordPiece tokens (ASR token i <-> PLM token i + 1)
    fairseq-hkd-build-dict --manifest data/train.tsv --unit wordpiece --plm-dir $PLM
    # Chinese: characters (bert-base-chinese has one token per character)
    fairseq-hkd-build-dict --manifest data/train.tsv --unit char
    # sentencepiece: an existing model, or train one on the transcripts first
    fairseq-hkd-build-dict --manifest data/train.tsv --unit spm --spm-model data/spm.model --spm-vocab-size 1000

Transcripts are encoded with ``fairseq_hkd.data.units.Units`` (exactly what the ``cif_asr`` task
does), symbols are counted and written as fairseq ``symbol count`` lines, most frequent first
(ties alphabetical). fairseq adds ``<s> <pad> </s> <unk>`` in front. ``--plm-vocab`` (wordpiece)
also lists the PLM tokens unseen in training (count 0) so that test transcripts never map to <unk>.
"""
import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.data.units import UNIT_TYPES, WORD_SEP, Units

logger = logging.getLogger("fairseq_hkd.teacher.build_dict")

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def train_spm(texts: Sequence[str], model_path: str, vocab_size: int, model_type: str = "unigram") -> None:
    """Train a sentencepiece model on ``texts``, written to ``model_path`` (``.model`` + ``.vocab``)."""
    import sentencepiece as spm

    prefix = str(model_path)[: -len(".model")] if str(model_path).endswith(".model") else str(model_path)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, hard_vocab_limit=False,
        minloglevel=2,
    )


def count_symbols(manifests: Sequence[str], units: Units, progress: bool = True) -> Counter:
    """Symbol counts over every transcript of ``manifests``; errors name file:line."""
    counts: Counter = Counter()
    for m in manifests:
        for e in tqdm(read_manifest(m, check_audio_exists=False), desc=f"count {Path(m).name}", disable=not progress):
            if units.unit == "char" and WORD_SEP in e.tgt_text:
                raise ValueError(f"{e.where}: transcript of {e.id!r} contains {WORD_SEP!r}, which char units use for a space; remove it")
            symbols = units.encode(e.tgt_text)
            bad = [s for s in symbols if s in FAIRSEQ_SPECIALS or not s.strip() or len(s.split()) != 1]
            if bad:
                raise ValueError(f"{e.where}: transcript of {e.id!r} gives unit {bad[0]!r}, which cannot be a dict.txt symbol")
            counts.update(symbols)
    return counts


def build_dict(
    manifests: Sequence[str],
    unit: str,
    out: Optional[str] = None,
    plm_dir: Optional[str] = None,
    spm_model: Optional[str] = None,
    spm_vocab_size: Optional[int] = None,
    lowercase: bool = False,
    min_count: int = 1,
    plm_vocab: bool = False,
    progress: bool = True,
) -> str:
    """Write dict.txt (default: next to the first manifest); returns its path."""
    out = out or str(Path(manifests[0]).parent / "dict.txt")
    if unit == "spm" and spm_vocab_size:
        if not spm_model:
            raise ValueError("--spm-vocab-size trains a model: give its output path with --spm-model")
        texts = [e.tgt_text.lower() if lowercase else e.tgt_text for m in manifests for e in read_manifest(m, check_audio_exists=False)]
        train_spm(texts, spm_model, spm_vocab_size)
        logger.info(f"trained sentencepiece model {spm_model} ({spm_vocab_size} pieces)")
    units = Units(unit, tokenizer_dir=plm_dir, spm_model=spm_model, lowercase=lowercase)
    counts = count_symbols(manifests, units, progress)
    if plm_vocab:
        if unit != "wordpiece":
            raise ValueError("--plm-vocab applies to --unit wordpiece only")
        tok = units._tokenizer
        for sym in tok.get_vocab():
            if sym not in tok.all_special_tokens and sym not in counts:
                counts[sym] = 0
    kept: List[tuple] = sorted(((s, c) for s, c in counts.items() if c >= min_count or (plm_vocab and c == 0)),
                               key=lambda sc: (-sc[1], sc[0]))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for s, c in kept:
            f.write(f"{s} {c}\n")
    dropped = len(counts) - len(kept)
    logger.info(f"wrote {out}: {len(kept)} {unit} symbols from {sum(counts.values())} tokens"
                f"{f', {dropped} rarer than --min-count {min_count} left to <unk>' if dropped else ''}")
    return out


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseq-hkd-build-dict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", nargs="+", required=True, help="training manifest(s) TSV")
    p.add_argument("--unit", choices=UNIT_TYPES, required=True, help="ASR unit type")
    p.add_argument("--plm-dir", default=None, help="local PLM/tokenizer directory (--unit wordpiece or word)")
    p.add_argument("--spm-model", default=None, help="sentencepiece model (--unit spm); trained here with --spm-vocab-size")
    p.add_argument("--spm-vocab-size", type=int, default=None, help="train a unigram spm model of this size first")
    p.add_argument("--lowercase", action="store_true", help="lowercase transcripts (char/spm), as the task will")
    p.add_argument("--min-count", type=int, default=1, help="drop symbols seen fewer times (they become <unk>)")
    p.add_argument("--plm-vocab", action="store_true", help="wordpiece: also list unseen PLM tokens (count 0)")
    p.add_argument("--out", default=None, help="output dict.txt (default: next to the first manifest)")
    return p


def cli_main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout)
    a = get_parser().parse_args(argv)
    build_dict(a.manifest, a.unit, a.out, a.plm_dir, a.spm_model, a.spm_vocab_size, a.lowercase, a.min_count, a.plm_vocab)


if __name__ == "__main__":
    cli_main()
