"""Identities written into a teacher store's fingerprint: the PLM and its tokenizer (class, config and
file hashes) and the transcripts the states were computed from."""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Tuple

from fairseq_hkd.data.units import _TOKENIZER_FILES, file_sha1

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


def transcripts_sha1(pairs: Iterable[Tuple[str, str]]) -> str:
    """Hash of a split's (id, transcript) pairs in manifest order (the fingerprint's ``transcripts_sha1``)."""
    h = hashlib.sha1()
    for utt, text in pairs:
        h.update(f"{utt}\t{text}\n".encode("utf-8"))
    return h.hexdigest()[:12]


def transcript_sha1(text: str) -> str:
    """Hash of one transcript exactly as the manifest reader returns it (the store index's 4th column)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
