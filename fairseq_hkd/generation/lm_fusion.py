"""Language-model shallow fusion for the CIF beam search (the paper's "+LM" columns).

Usage (fairseq's own generation options)::

    fairseq-generate DATA --user-dir fairseq_hkd --task cif_asr --path ckpt.pt --beam 10 \\
        --lm-path exp/lm/checkpoint_best.pt --lm-weight 0.2
    fairseq-hkd-transcribe --path ckpt.pt --lm-path exp/lm/checkpoint_best.pt --lm-weight 0.2 a.wav

The LM is a fairseq language model (``fairseq-train --task language_modeling --arch
transformer_lm ...``, recipes ``examples/*/lm.sh``) trained on the training transcripts written
in the ASR units, binarised with ``fairseq-preprocess --only-source --srcdict DATA/dict.txt`` so
that its token ids are the ASR ids.

Scoring rule (W = ``--lm-weight``; prefixes start with ``</s>``, as in fairseq LM training with
``--sample-break-mode eos``)
----------------------------------------------------------------------------------------------
Every token the CIF search chooses, ``</s>`` included, scores
``log p_ASR(y_i | y_<i, c) + W * log p_LM(y_i | </s> y_<i)``. A hypothesis still open after its
last CIF step gets ``</s>`` appended (see cif_generator.py) and pays ``W * log p_LM(</s> | </s> y)``
for it (no ASR term: the ASR decoder was never asked). So with or without a chosen ``</s>``, the
LM part of every hypothesis is its full sentence log-probability ``W * log p_LM(y </s>)``, and an
utterance with no CIF tokens scores ``W * log p_LM(</s> | </s>)``. ``score`` and
``positional_scores`` hold the fused values (their sum is the score).
No length bonus: CIF fixes the number of steps, so the hypotheses of one utterance differ in length
by at most ``--cif-eos-slack`` tokens. The appended ``</s>`` is scored after the last step's
pruning (like any next-step cost in beam search); the n-best ranking includes it.
W = 0 (fairseq's default) runs the plain search: the LM is not even called.

How fairseq-generate hands the LM over
--------------------------------------
``fairseq_cli/generate.py`` loads ``--lm-path`` itself, with
``checkpoint_utils.load_model_ensemble([lm_path], arg_overrides={..., "data": DATA}, task=None)``:
the LM's ``language_modeling`` task then reads ``DATA/dict.txt``, the ASR dictionary, and the
LM is built with that vocabulary. It passes the model to ``task.build_generator`` as
``extra_gen_cls_kwargs={"lm_model": lm, "lm_weight": W}``. A mismatched LM would fail there with
a ``size mismatch`` traceback (or, with the same number of symbols, decode silently with wrong
ids), so :func:`install_lm_dictionary_check` (called by ``CifAsrTask.setup_task``) wraps that
loader: before fairseq loads a language-model checkpoint with a ``data`` override it compares
the LM's training dictionary with ``DATA/dict.txt`` and stops with a one-line error
(:class:`LmDictionaryError`, a ``SystemExit``: no traceback). The LM's training dictionary is
``dict.txt`` of the LM's own data directory (``cfg.task.data`` in the checkpoint) or, when that
has moved, ``dict.txt`` next to the checkpoint (lm.sh copies it there); when neither exists
only the vocabulary size can be compared.
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from fairseq_hkd.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["LmDictionaryError", "LmScorer", "check_lm_dictionary", "check_lm_model", "load_lm",
           "install_lm_dictionary_check"]


class LmDictionaryError(SystemExit):
    """The LM's vocabulary is not the ASR dictionary. A ``SystemExit`` with a one-line message, so
    fairseq-generate and fairseq-hkd-transcribe stop with the message and no traceback."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")
        self.message = message


_FIX = "train the LM on the ASR units with fairseq-preprocess --only-source --srcdict {dict} (examples/*/lm.sh)"


# ---------------------------------------------------------------------------------------------- checks
def _state_cfg(state: dict):
    cfg = state.get("cfg")
    if cfg is None and state.get("args") is not None:
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        cfg = convert_namespace_to_omegaconf(state["args"])
    return cfg


def _task_name(cfg) -> str:
    try:
        return str(cfg.task._name)
    except Exception:  # noqa: BLE001  (an unusual config: treat as unknown)
        return ""


def lm_vocab_size(model_state: Dict[str, Tensor]) -> Optional[int]:
    """Rows of the LM's token embedding (or output projection) in a state dict; None if not found."""
    for key in ("decoder.embed_tokens.weight", "decoder.output_projection.weight", "decoder.embed_out"):
        w = model_state.get(key)
        if w is not None and w.dim() == 2:
            return int(w.size(0))
    return None


def lm_training_dict(lm_path: str, cfg) -> Optional[str]:
    """dict.txt of the LM's training data directory, else dict.txt next to the checkpoint, else None."""
    candidates = []
    try:
        data = str(cfg.task.data or "")
    except Exception:  # noqa: BLE001
        data = ""
    if data:
        candidates.append(os.path.join(data.split(os.pathsep)[0], "dict.txt"))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(lm_path)), "dict.txt"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    """'; id I is X in the LM's, Y in the ASR's' for the first differing id, '' when one extends the other."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"; id {i} is {x!r} in the LM's, {y!r} in the ASR's"
    return ""


def check_lm_dictionary(lm_path: str, dict_path: str, state: Optional[dict] = None) -> None:
    """Stop with :class:`LmDictionaryError` unless the LM checkpoint ``lm_path`` was trained on the
    symbols of the ASR dictionary ``dict_path``. ``state``: the checkpoint, already loaded without
    overrides (``checkpoint_utils.load_checkpoint_to_cpu``)."""
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary

    if not os.path.isfile(lm_path):
        raise LmDictionaryError(f"--lm-path {lm_path}: no such file")
    if state is None:
        state = checkpoint_utils.load_checkpoint_to_cpu(lm_path)
    asr = Dictionary.load(dict_path)
    fix = _FIX.format(dict=dict_path)
    lm_dict_path = lm_training_dict(lm_path, _state_cfg(state))
    if lm_dict_path is not None:
        lm = Dictionary.load(lm_dict_path)
        if lm.symbols != asr.symbols:
            raise LmDictionaryError(
                f"language model {lm_path} was trained with the dictionary {lm_dict_path} ({len(lm)} symbols), "
                f"not the ASR dictionary {dict_path} ({len(asr)} symbols"
                f"{_first_difference(lm.symbols, asr.symbols)}): {fix}"
            )
    n = lm_vocab_size(state.get("model") or {})
    if n is not None and n != len(asr):
        raise LmDictionaryError(
            f"language model {lm_path} has a {n}-symbol vocabulary but the ASR dictionary {dict_path} has "
            f"{len(asr)} symbols: {fix}"
        )
    if lm_dict_path is None:
        logger.warning(f"{lm_path}: its training dict.txt was not found (neither in its data directory nor next to "
                       f"it); only the vocabulary size ({n}) was checked against {dict_path}")


def check_lm_model(lm_model, tgt_dict, lm_path: Optional[str] = None, dict_path: Optional[str] = None) -> None:
    """A loaded LM against the ASR dictionary: same symbols (when the LM keeps its dictionary) and
    an output layer of the same size. Stops with :class:`LmDictionaryError`."""
    lm_path = lm_path or "(--lm-path)"
    dict_path = dict_path or "the ASR dict.txt"
    fix = _FIX.format(dict=dict_path)
    lm_dict = getattr(getattr(lm_model, "decoder", lm_model), "dictionary", None)
    if lm_dict is not None and list(lm_dict.symbols) != list(tgt_dict.symbols):
        raise LmDictionaryError(
            f"language model {lm_path} was loaded with a dictionary of {len(lm_dict)} symbols that is not the ASR "
            f"dictionary {dict_path} ({len(tgt_dict)} symbols"
            f"{_first_difference(lm_dict.symbols, tgt_dict.symbols)}): {fix}"
        )
    n = lm_vocab_size(lm_model.state_dict())
    if n is not None and n != len(tgt_dict):
        raise LmDictionaryError(
            f"language model {lm_path} has a {n}-symbol vocabulary but the ASR dictionary {dict_path} has "
            f"{len(tgt_dict)} symbols: {fix}"
        )


# ---------------------------------------------------------------------------------------------- loading
def _check_before_fairseq_loads(original):
    """Wrap ``checkpoint_utils.load_model_ensemble``: fairseq-generate's ``--lm-path`` call (one
    file, ``task=None``, a ``data`` override) of a language-model checkpoint is checked first."""

    @functools.wraps(original)
    def load_model_ensemble(filenames, arg_overrides=None, task=None, *args, **kwargs):
        if task is None and arg_overrides and arg_overrides.get("data") and len(filenames) == 1 \
                and os.path.isfile(filenames[0]):
            from fairseq import checkpoint_utils

            state = checkpoint_utils.load_checkpoint_to_cpu(filenames[0])  # without the overrides
            if "language_modeling" in _task_name(_state_cfg(state)):
                data = str(arg_overrides["data"]).split(os.pathsep)[0]
                check_lm_dictionary(filenames[0], os.path.join(data, "dict.txt"), state)
            del state
        return original(filenames, arg_overrides, task, *args, **kwargs)

    load_model_ensemble.__hkd_lm_check__ = True
    return load_model_ensemble


def install_lm_dictionary_check() -> None:
    """Idempotent: wrap fairseq's ``checkpoint_utils.load_model_ensemble`` (see the module doc)."""
    from fairseq import checkpoint_utils

    if not getattr(checkpoint_utils.load_model_ensemble, "__hkd_lm_check__", False):
        checkpoint_utils.load_model_ensemble = _check_before_fairseq_loads(checkpoint_utils.load_model_ensemble)


def load_lm(lm_path: str, dict_path: str, tgt_dict=None, device=None, fp16: bool = False):
    """Load an LM checkpoint as fairseq-generate does (``load_model_ensemble`` with the ASR data
    directory as ``data``), after the dictionary check; eval mode, on ``device``."""
    from fairseq import checkpoint_utils

    install_lm_dictionary_check()
    dict_path = os.path.abspath(dict_path)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.dirname(dict_path)
        if os.path.basename(dict_path) != "dict.txt":  # the LM task reads DATA/dict.txt
            os.symlink(dict_path, os.path.join(tmp, "dict.txt"))
            data = tmp
        models, _ = checkpoint_utils.load_model_ensemble([lm_path], arg_overrides={"data": data}, task=None)
    lm = models[0]
    if tgt_dict is not None:
        check_lm_model(lm, tgt_dict, lm_path, dict_path)
    if fp16:
        lm = lm.half()
    if device is not None:
        lm = lm.to(device)
    return lm.eval()


# ---------------------------------------------------------------------------------------------- scoring
class LmScorer:
    """Runs a fairseq LM incrementally over the beam rows of the CIF search.

    ``step(tokens [R, t])`` -> float32 log-probs [R, V] of the next token after each row's prefix
    (the full prefix is passed, fairseq's incremental convention; only its last token is new);
    ``reorder(order [R'])`` keeps the LM's incremental state in step with the beam. ``<pad>`` in the
    input (rows that finished) is fed as ``</s>``, so the LM never builds a padding mask; those
    rows' scores are not used.
    """

    def __init__(self, lm_model, weight: float, eos: int, pad: int, vocab_size: int):
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"--lm-weight must be a finite number >= 0, got {weight}")
        self.model = lm_model
        self.weight = float(weight)
        self.eos, self.pad, self.vocab_size = eos, pad, vocab_size
        self.decoder = getattr(lm_model, "decoder", lm_model)
        self.state: Dict[str, Dict[str, Optional[Tensor]]] = {}

    def reset(self) -> None:
        self.state = {}
        self.model.eval()

    def step(self, tokens: Tensor) -> Tensor:
        x = tokens.masked_fill(tokens == self.pad, self.eos)
        out = self.model(x, incremental_state=self.state)
        lprobs = self.model.get_normalized_probs(out, log_probs=True)[:, -1, :].float()
        if lprobs.size(-1) != self.vocab_size:
            raise LmDictionaryError(f"the language model predicts {lprobs.size(-1)} symbols, the ASR dictionary has "
                                    f"{self.vocab_size}")
        return lprobs

    def reorder(self, order: Tensor) -> None:
        if not self.state:
            return
        if hasattr(self.decoder, "reorder_incremental_state_scripting"):
            self.decoder.reorder_incremental_state_scripting(self.state, order)
        else:
            self.decoder.reorder_incremental_state(self.state, order)


# ---------------------------------------------------------------------------------------------- LM text
def write_unit_text(task, manifests: Sequence[str], out, texts: Sequence[str] = ()) -> int:
    """Write the transcripts of ``manifests`` (and the lines of the plain-text files ``texts``) as
    space-separated ASR unit symbols, one sentence per line, with the task's own ``Units`` (the
    tokenizer and normalisation fairseq-train applies to targets). Returns the number of lines."""
    from fairseq_hkd.data.manifest import read_manifest

    units = task.units
    n = 0

    def emit(text: str) -> None:
        nonlocal n
        symbols = units.encode(text)
        if symbols:
            out.write(" ".join(symbols) + "\n")
            n += 1

    for m in manifests:
        for e in read_manifest(m, check_audio_exists=False):
            emit(e.tgt_text)
    for t in texts:
        with open(t, encoding="utf-8") as f:
            for line in f:
                emit(line.strip())
    return n


def unit_text_cli_main(argv: Optional[List[str]] = None) -> None:
    """``python -m fairseq_hkd.generation.lm_fusion --manifest DATA/train.tsv --output FILE -- TASK_ARGS``

    TASK_ARGS: the task options fairseq-train gets (``DATA --user-dir fairseq_hkd --task cif_asr
    --unit ... --tokenizer-dir ...``), so the LM text uses exactly the ASR units.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m fairseq_hkd.generation.lm_fusion --manifest M [--manifest M2] "
                         "[--text FILE] --output FILE -- DATA --user-dir fairseq_hkd --task cif_asr [task options]")
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m fairseq_hkd.generation.lm_fusion",
                                description="transcripts -> ASR unit symbols, one sentence a line (LM training text)")
    p.add_argument("--manifest", action="append", default=[], help="manifest TSV (tgt_text column); repeatable")
    p.add_argument("--text", action="append", default=[], help="plain text file, one sentence a line; repeatable")
    p.add_argument("--output", required=True, help="output text file")
    args = p.parse_args(argv[:cut])
    if not args.manifest and not args.text:
        raise SystemExit("give at least one --manifest or --text")

    from fairseq import options, tasks

    parser = options.get_generation_parser()
    task_args = options.parse_args_and_arch(parser, argv[cut + 1:])
    task = tasks.setup_task(task_args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        n = write_unit_text(task, args.manifest, out, args.text)
    print(f"{args.output}: {n} sentences in {task.units.unit} units")


if __name__ == "__main__":
    unit_text_cli_main()
