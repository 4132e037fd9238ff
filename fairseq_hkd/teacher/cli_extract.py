"""Run a PLM over every transcript of a split and write its teacher store.

The console script ``fairseq-hkd-extract-teacher``; the extraction itself is ``extract.py``.

Usage::

    fairseq-hkd-extract-teacher --manifest data/train.tsv --plm-dir /path/to/bert \\
        --unit wordpiece [--layer -1] [--dtype float16] [--batch-size 64] [--out-dir data]

    # characters (Chinese, or English chars) / sentencepiece: states mean-pooled per unit
    fairseq-hkd-extract-teacher --manifest data/train.tsv --plm-dir /path/to/bert-base-chinese --unit char
    fairseq-hkd-extract-teacher --manifest data/train.tsv --plm-dir $PLM --unit spm --spm-model data/spm.model

The PLM is loaded with ``transformers.AutoModel``/``AutoTokenizer`` from a local directory
(``local_files_only``; nothing is downloaded), in eval mode under ``torch.no_grad``. The units are
built exactly as the ``cif_asr`` task builds them (``fairseq_hkd.data.units.Units``), each
transcript is encoded to unit symbols, and the chosen layer's states are paired with the symbols
(``align.py``) and written to ``{out_dir}/{split}.teacher.{npy,index.tsv,json}`` (``store.py``).
The task then loads the store next to the manifest. Train and every validation split need one.
"""
import argparse
import logging
import sys

from fairseq_hkd.data.units import UNIT_TYPES
from fairseq_hkd.teacher.extract import extract_teacher


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseq-hkd-extract-teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="split manifest TSV (id, audio, n_samples, tgt_text)")
    p.add_argument("--plm-dir", required=True, help="local PLM directory (transformers AutoModel + AutoTokenizer)")
    p.add_argument("--unit", choices=UNIT_TYPES, default="wordpiece", help="ASR units, as given to the task")
    p.add_argument("--tokenizer-dir", default=None, help="tokenizer of the wordpiece units (default: --plm-dir)")
    p.add_argument("--spm-model", default=None, help="sentencepiece model (--unit spm)")
    p.add_argument("--dict", dest="dict_path", default=None, help="ASR dict.txt (default: next to the manifest)")
    p.add_argument("--lowercase", action="store_true", help="lowercase text for char/spm units, as the task does")
    p.add_argument("--out-dir", default=None, help="where the store goes (default: the manifest's directory)")
    p.add_argument("--split", default=None, help="split name (default: the manifest's file stem)")
    p.add_argument("--layer", type=int, default=-1, help="hidden-state index: -1 last layer, 0 embeddings, i layer i")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage dtype")
    p.add_argument("--batch-size", type=int, default=64, help="transcripts per PLM forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    return p


def cli_main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout)
    a = get_parser().parse_args(argv)
    extract_teacher(a.manifest, a.plm_dir, a.unit, a.out_dir, a.split, a.tokenizer_dir, a.spm_model, a.dict_path,
                    a.lowercase, a.layer, a.dtype, a.batch_size, a.device)


if __name__ == "__main__":
    cli_main()
