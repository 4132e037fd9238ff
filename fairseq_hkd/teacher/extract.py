"""Extract one split's teacher store: encode every transcript to ASR units exactly as the ``cif_asr``
task does (``fairseq_hkd.data.units.Units``), run the PLM (``plm.py``) over them in length-sorted
batches, pair the chosen layer's states with the units (``align.py``) and write
``{out_dir}/{split}.teacher.{npy,index.tsv,json}`` (``store.py``) with the fingerprint of the PLM,
tokenizer, units and transcripts (``fingerprint.py``). The console script is ``cli_extract.py``
(``fairseq-hkd-extract-teacher``).
"""
import logging
import os
import time
from pathlib import Path
from typing import List, Optional

import torch
from tqdm import tqdm

from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.data.units import UNIT_TYPES, Units
from fairseq_hkd.teacher.align import align_states, pool_matrix, unit_char_spans, wordpiece_input_ids
from fairseq_hkd.teacher.fingerprint import plm_fingerprint, transcripts_sha1
from fairseq_hkd.teacher.plm import load_plm, run_batch
from fairseq_hkd.teacher.store import TeacherStoreWriter

logger = logging.getLogger("fairseq_hkd.teacher.extract")


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
    absolute = {k: (os.path.abspath(v) if v is not None else None) for k, v in (
        ("manifest", manifest), ("plm_dir", plm_dir), ("tokenizer_dir", tokenizer_dir), ("spm_model", spm_model),
        ("dict_path", dict_path), ("out_dir", out_dir))}
    fp.update(layer=layer, units=units.fingerprint(),
              transcripts_sha1=transcripts_sha1((e.id, e.tgt_text) for e in entries),
              split=split, manifest=os.path.basename(manifest),
              extract_args=dict(absolute, unit=unit, lowercase=lowercase, layer=layer, dtype=dtype, split=split))
    dim = int(model.config.hidden_size)
    writer = TeacherStoreWriter(out_dir, split, [(it.utt, it.num_units + 1) for it in items], dim, dtype, fp,
                                transcripts={e.id: e.tgt_text for e in entries})
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))  # length-sorted batches: little padding
    token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    plm_tokens = unmatched = 0
    with tqdm(total=len(items), desc=f"extract {split}", unit="utt", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            batch = [items[i] for i in order[s : s + batch_size]]
            states = run_batch(model, [it.ids for it in batch], tokenizer.pad_token_id, layer, device, token_types)
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
