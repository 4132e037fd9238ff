"""The exported model directory: what ``fairseq-hkd-export`` writes and the runtime reads.

Layout (file names fixed; ``config.json`` lists them)::

    DIR/config.json        everything besides the graphs (below)
    DIR/encoder.onnx       fbank [B, T, F], fbank_lengths [B] -> encoder_out [B, T', D],
                           encoder_lengths [B], alpha [B, T']
    DIR/decoder_step.onnx  autoregressive decoder: one step with its cache (export/graphs.py)
      or DIR/decoder.onnx  non-autoregressive decoder: cif_embeddings [B, N, C], cif_lengths [B]
                           -> lprobs [B, N, V]
    DIR/ctc.onnx           the CTC head: encoder_out [B, T', D] -> ctc_lprobs [B, T', V] (for the
                           count search; exports before 2026-12-03 lack it)
    DIR/dict.txt           the training dictionary (fairseq format; <s> <pad> </s> <unk> first)

config.json keys: ``format`` / ``version``; ``precision`` (fp32 | int8 | int8-encoder); ``files``; ``frontend``
(``fbank``: kaldi-native-fbank's FbankOptions as a dict, ``wave_scale``, ``sample_rate``,
``cmvn``: type global | utterance | none, with ``mean`` / ``std`` for global, ``min_source_frames``,
``strict_sample_rate``, ``multichannel``); ``units`` (unit type, lowercase); ``dictionary``
(size and special indices); ``cif`` (threshold, tail_threshold); ``search`` (eos_slack, and since
2026-12-03 count_search and ctc_weight: the task's ``--cif-count-search`` / ``--cif-ctc-weight``; since
2026-12-04 inner_eos: ``</s>`` may mark a sentence boundary, ``--cif-inner-eos``);
``encoder`` (downsample, embed_dim); ``decoder`` (type, layers, heads, head_dim); ``source``
(checkpoint, arch, versions).

Torch-free (numpy and the standard library only). Errors are :class:`ModelDirError`, one line
naming the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List

__all__ = ["ModelDir", "ModelDirError", "read_model_dir", "read_dictionary", "CONFIG_NAME", "FORMAT",
           "VERSION", "SPECIAL_SYMBOLS"]

CONFIG_NAME = "config.json"
FORMAT = "fairseq-hkd-onnx"
VERSION = 1
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary: bos 0, pad 1, eos 2, unk 3
_OVERWRITE = "#fairseq:overwrite"


class ModelDirError(ValueError):
    """A missing or inconsistent file of an exported model directory (the message names it)."""


@dataclass
class ModelDir:
    path: str
    config: Dict
    symbols: List[str]  # index -> symbol, the dictionary as fairseq loads it

    def file(self, key: str) -> str:
        """Path of the file ``config["files"][key]``."""
        return os.path.join(self.path, self.config["files"][key])

    @property
    def autoregressive(self) -> bool:
        return self.config["decoder"]["type"] == "autoregressive"


def read_dictionary(path: str) -> List[str]:
    """fairseq's ``Dictionary.load``: the four specials, then one ``SYMBOL COUNT [#fairseq:overwrite]``
    per line, in file order."""
    symbols = list(SPECIAL_SYMBOLS)
    seen = set(symbols)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise ModelDirError(f"dictionary {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        overwrite = False
        word, _, field = line.rpartition(" ")
        if field == _OVERWRITE:
            overwrite = True
            word, _, field = word.rpartition(" ")
        try:
            int(field)
        except ValueError:
            raise ModelDirError(f"dictionary {path}:{n}: expected 'SYMBOL COUNT', got {line!r}") from None
        if word in seen and not overwrite:
            raise ModelDirError(f"dictionary {path}:{n}: duplicate symbol {word!r} (without {_OVERWRITE})")
        seen.add(word)
        symbols.append(word)
    return symbols


def read_model_dir(path: str) -> ModelDir:
    """Read and check ``path``: config.json, every file it lists, the dictionary's size."""
    if not os.path.isdir(path):
        raise ModelDirError(f"model directory {path} not found (write one with fairseq-hkd-export)")
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise ModelDirError(f"{cfg_path} not found: {path} is not a complete fairseq-hkd-export directory")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{cfg_path} is not readable JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelDirError(f"{cfg_path} is not a {FORMAT} config (format={config.get('format')!r})"
                            if isinstance(config, dict) else f"{cfg_path} is not a {FORMAT} config")
    if config.get("version") != VERSION:
        raise ModelDirError(f"{cfg_path} has format version {config.get('version')!r}; this runtime reads "
                            f"version {VERSION} (re-export the checkpoint with this fairseq-hkd)")
    for key in ("files", "frontend", "units", "dictionary", "cif", "search", "encoder", "decoder"):
        if key not in config:
            raise ModelDirError(f"{cfg_path} lacks the key {key!r} (re-export the checkpoint)")
    for key, name in config["files"].items():
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            raise ModelDirError(f"{f} not found: the model directory is incomplete ({key}; re-export it)")
    dict_path = os.path.join(path, config["files"]["dictionary"])
    symbols = read_dictionary(dict_path)
    want = config["dictionary"]["size"]
    if len(symbols) != want:
        raise ModelDirError(f"dictionary {dict_path} has {len(symbols)} symbols but the exported model predicts "
                            f"{want} (config.json): the directory mixes files of different models")
    return ModelDir(path, config, symbols)
