"""Run a PLM over every transcript of a split and write its teacher store.

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
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.data.units import _TOKENIZER_FILES, UNIT_TYPES, Units, file_sha1
from fairseq_hkd.teacher.align import align_states, pool_matrix, unit_char_spans, wordpiece_input_ids
from fairseq_hkd.teacher.store import TeacherStoreWriter

logger = logging.getLogger("fairseq_hkd.teacher.extract")

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

def plm_fingerprint(plm_dir: str, model, tokenizer) -> Dict[str, dict]:
    """PLM and tokenizer identity: name, class, config and weight-file hashes; tokenizer class and file hashes.

    The config hash leaves out where the model was loaded from and the transformers version.
    """
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    plm = {
        "name": os.path.basename(os.path.normpath(plm_dir)),
        "class": type(model).__name__,
        "config_sha1": hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12],
    }
    for name in _WEIGHT_FILES:
        if (Path(plm_dir) / name).is_file():
            plm["weights_sha1"] = file_sha1(Path(plm_dir) / name)
            break
    tok = {"class": type(tokenizer).__name__}
    for name in _TOKENIZER_FILES:
        if (Path(plm_dir) / name).is_file():
            tok[name] = file_sha1(Path(plm_dir) / name)
    return {"plm": plm, "tokenizer": tok}


def transcripts_sha1(entries) -> str:
    """Hash of the (id, transcript) pairs in manifest order."""
    h = hashlib.sha1()
    for e in entries:
        h.update(f"{e.id}\t{e.tgt_text}\n".encode("utf-8"))
    return h.hexdigest()[:12]


class _Item:
    """One utterance prepared for the PLM: input ids and (char/spm units) the unit and token character
    spans; the pooling matrix is built per batch (keeping one per utterance would cost gigabytes)."""

    __slots__ = ("utt", "ids", "unit_spans", "token_spans", "num_units")

    def __init__(self, utt, ids, unit_spans, token_spans, num_units):
        self.utt, self.ids, self.unit_spans, self.token_spans, self.num_units = utt, ids, unit_spans, token_spans, num_units


def prepare_item(utt: str, symbols: List[str], unit: str, tokenizer, max_len: int) -> _Item:
    """PLM input and alignment of one transcript; raises (naming ``utt``) when it cannot be paired."""
    if unit == "wordpiece":
        ids = wordpiece_input_ids(symbols, tokenizer, utt)
        spans = token_spans = None
    else:
        text, spans = unit_char_spans(symbols, unit)
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if ids[0] != tokenizer.cls_token_id or ids[-1] != tokenizer.sep_token_id:
            raise ValueError(f"utterance {utt!r}: the tokenizer does not wrap text in [CLS] .. [SEP]; a BERT-like PLM is needed")
        token_spans = [tuple(o) for o in offsets[1:-1]]
    if len(ids) > max_len:
        raise ValueError(
            f"utterance {utt!r}: {len(ids)} PLM tokens exceed the PLM's maximum length {max_len}; "
            f"shorten/split the utterance or remove it from the manifest (nothing is truncated)"
        )
    return _Item(utt, ids, spans, token_spans, len(symbols))


def load_plm(plm_dir: str, device: str):
    """AutoTokenizer + AutoModel from a local directory, eval mode, on ``device``."""
    from transformers import AutoModel, AutoTokenizer

    if not Path(plm_dir).is_dir():
        raise FileNotFoundError(f"--plm-dir {plm_dir} is not a directory (a local PLM with config.json, weights, tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(plm_dir, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{plm_dir}: a fast tokenizer (tokenizer.json or a vocab convertible by `tokenizers`) is needed for offsets")
    model = AutoModel.from_pretrained(plm_dir, local_files_only=True).to(device).eval()
    return tokenizer, model


@torch.no_grad()
def run_batch(model, items: List[_Item], pad_id: int, layer: int, device: str,
              token_types: bool = True) -> List[np.ndarray]:
    """PLM states [len(ids), D] (float32) of each item, chosen layer (index into hidden_states)."""
    n = max(len(it.ids) for it in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for b, it in enumerate(items):
        ids[b, : len(it.ids)] = torch.tensor(it.ids)
        mask[b, : len(it.ids)] = 1
    extra = {"token_type_ids": torch.zeros_like(ids).to(device)} if token_types else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=layer != -1, **extra)
    h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    h = h.float().cpu().numpy()
    return [h[b, : len(it.ids)] for b, it in enumerate(items)]


def extract_teacher(
    manifest: str,
    plm_dir: str,
    unit: str = "wordpiece",
    out_dir: Optional[str] = None,
    split: Optional[str] = None,
    tokenizer_dir: Optional[str] = None,
    spm_model: Optional[str] = None,
    dict_path: Optional[str] = None,
    lowercase: bool = False,
    layer: int = -1,
    dtype: str = "float16",
    batch_size: int = 64,
    device: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Extract one split's teacher store; returns the written fingerprint (with a ``summary``)."""
    t0 = time.time()
    manifest_path = Path(manifest)
    split = split or manifest_path.stem
    out_dir = str(out_dir or manifest_path.parent)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if unit not in UNIT_TYPES:
        raise ValueError(f"unknown unit {unit!r}: choose one of {', '.join(UNIT_TYPES)}")
    if dict_path is None and (manifest_path.parent / "dict.txt").is_file():
        dict_path = str(manifest_path.parent / "dict.txt")
    tokenizer, model = load_plm(plm_dir, device)
    units = Units(unit, dict_path=dict_path, tokenizer_dir=tokenizer_dir or plm_dir, spm_model=spm_model, lowercase=lowercase)
    n_layers = int(model.config.num_hidden_layers)
    if not -1 <= layer <= n_layers:
        raise ValueError(f"--layer {layer}: the PLM has hidden states 0 (embeddings) .. {n_layers}, or -1 (last)")
    max_len = int(getattr(model.config, "max_position_embeddings", 512))

    entries = read_manifest(manifest, check_audio_exists=False)
    items = []
    for e in tqdm(entries, desc=f"align {split}", disable=not progress, leave=False):
        symbols = units.encode(e.tgt_text)
        if not symbols:
            raise ValueError(f"{e.where}: utterance {e.id!r} encodes to no {unit} units")
        try:
            items.append(prepare_item(e.id, symbols, unit, tokenizer, max_len))
        except ValueError as err:
            raise ValueError(f"{e.where}: {err}") from None

    fp = plm_fingerprint(plm_dir, model, tokenizer)
    fp.update(layer=layer, units=units.fingerprint(), transcripts_sha1=transcripts_sha1(entries),
              split=split, manifest=os.path.basename(manifest))
    dim = int(model.config.hidden_size)
    writer = TeacherStoreWriter(out_dir, split, [(it.utt, it.num_units + 1) for it in items], dim, dtype, fp)
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))  # length-sorted batches: little padding
    token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    plm_tokens = unmatched = 0
    with tqdm(total=len(items), desc=f"extract {split}", unit="utt", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            batch = [items[i] for i in order[s : s + batch_size]]
            states = run_batch(model, batch, tokenizer.pad_token_id, layer, device, token_types)
            for it, h in zip(batch, states):
                pool = None
                if it.unit_spans is not None:
                    pool, n = pool_matrix(it.unit_spans, it.token_spans)
                    unmatched += n
                writer.write(it.utt, align_states(h, unit, it.num_units, pool))
                plm_tokens += len(it.ids)
            bar.update(len(batch))
    writer.close()
    summary = {
        "utterances": len(items),
        "rows": writer.num_rows,
        "plm_tokens": plm_tokens,
        "units_without_plm_token": unmatched,
        "seconds": round(time.time() - t0, 1),
        "bytes": os.path.getsize(writer.paths["array"]),
    }
    logger.info(
        f"teacher store {writer.paths['array']}: {summary['utterances']} utterances, {summary['rows']} states "
        f"x {dim} ({dtype}, layer {layer}), {plm_tokens} PLM tokens, "
        f"{summary['units_without_plm_token']} units pooled from neighbours, "
        f"{summary['bytes'] / 2**20:.1f} MiB, {summary['seconds']} s"
    )
    return dict(writer.fingerprint, summary=summary)


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
