"""Average the parameters of the last N checkpoints (the paper averages the last 10 epochs).

fairseq's ``scripts/average_checkpoints.py`` is not part of the installed package, so this is
ours, with the same options. Parameters are accumulated in float64 and cast back to their dtype;
integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are taken from the newest checkpoint.
The output keeps the newest checkpoint's config and training state but no optimizer state, so it
decodes with fairseq-generate and fine-tunes with ``--restore-file avg.pt --reset-optimizer``.

Usage::

    # the last 10 epoch checkpoints (checkpointEPOCH.pt) of a run
    fairseq-hkd-average-checkpoints --inputs exp/cif_hkd --num-epoch-checkpoints 10 \\
        --output exp/cif_hkd/checkpoint_avg10.pt
    # epochs <= 240 only
    fairseq-hkd-average-checkpoints --inputs exp/cif_hkd --num-epoch-checkpoints 10 \\
        --checkpoint-upper-bound 240 --output exp/cif_hkd/checkpoint_avg10.pt
    # update-based checkpoints (checkpoint_EPOCH_UPDATE.pt), or explicit files
    fairseq-hkd-average-checkpoints --inputs exp/run --num-update-checkpoints 5 --output avg.pt
    fairseq-hkd-average-checkpoints --inputs a.pt b.pt c.pt --output avg.pt
    # the EMA weights of a run trained with --store-ema --ema-decay D, as a checkpoint to decode
    fairseq-hkd-average-checkpoints --inputs exp/run/checkpoint_last.pt --ema --output exp/run/checkpoint_ema.pt

    fairseq-generate DATA --user-dir fairseq_hkd --task cif_asr --path exp/cif_hkd/checkpoint_avg10.pt \\
        --gen-subset test --beam 10 --scoring wer --wer-char-level
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["average_checkpoints", "last_checkpoints", "cli_main"]

_EPOCH_RE = re.compile(r"^checkpoint(\d+)\.pt$")
_UPDATE_RE = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")


def last_checkpoints(directory: str, n: int, by: str = "epoch", upper_bound: Optional[int] = None) -> List[str]:
    """Paths of the last ``n`` checkpoints in ``directory``, oldest first.

    by: "epoch" (``checkpoint{E}.pt``) or "update" (``checkpoint_{E}_{U}.pt``); ``upper_bound``
    skips those with a larger epoch / update number. Raises when fewer than ``n`` exist.
    """
    pattern = _EPOCH_RE if by == "epoch" else _UPDATE_RE
    found = []
    for name in os.listdir(directory):
        m = pattern.match(name)
        if m and (upper_bound is None or int(m.group(1)) <= upper_bound):
            found.append((int(m.group(1)), os.path.join(directory, name)))
    found.sort()
    if len(found) < n:
        kind = "checkpoint{EPOCH}.pt" if by == "epoch" else "checkpoint_{EPOCH}_{UPDATE}.pt"
        raise FileNotFoundError(
            f"asked to average the last {n} {by} checkpoints but {directory} has {len(found)} files named "
            f"{kind}{'' if upper_bound is None else f' up to {upper_bound}'} (fairseq-train keeps them unless "
            "--no-epoch-checkpoints / --keep-last-epochs removed them)"
        )
    return [p for _, p in found[-n:]]


def average_checkpoints(paths: Sequence[str], ema: bool = False) -> Dict:
    """Load fairseq checkpoints and return the newest one's state with averaged ``model`` weights.

    ema: average the weights' exponential moving averages that ``fairseq-train --store-ema`` keeps in
    each checkpoint (``extra_state["ema"]``) instead of the trained weights; with one path this is
    that checkpoint's EMA as a checkpoint of its own, which fairseq-generate decodes.
    """
    from fairseq import checkpoint_utils  # torch.load goes through fairseq_hkd.compat's shims

    if not paths:
        raise ValueError("no checkpoints to average")
    sums: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    state = None
    for i, path in enumerate(paths):
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        if ema:
            model = (state.get("extra_state") or {}).get("ema")
            if model is None:
                raise ValueError(f"{path} holds no EMA weights: train with --store-ema --ema-decay D, or "
                                 "average its trained weights (leave out --ema)")
            state["model"] = model
        model = state["model"]
        if i == 0:
            keys = list(model.keys())
        elif list(model.keys()) != keys:
            diff = set(keys) ^ set(model.keys())
            raise ValueError(f"{path} has different parameters than {paths[0]} (e.g. {sorted(diff)[:3]}): "
                             "only checkpoints of one model can be averaged")
        for k, v in model.items():
            if v.is_floating_point():
                acc = v.double()
                sums[k] = acc if i == 0 else sums[k] + acc
            else:
                sums[k] = v  # integer buffers: the newest checkpoint's
    averaged = collections.OrderedDict()
    for k, v in state["model"].items():
        averaged[k] = (sums[k] / len(paths)).to(v.dtype) if v.is_floating_point() else sums[k]
    state["model"] = averaged
    state["last_optimizer_state"] = None
    state.setdefault("extra_state", {})
    if state["extra_state"] is None:
        state["extra_state"] = {}
    state["extra_state"]["averaged_from"] = [os.path.basename(p) for p in paths]
    state["extra_state"]["averaged_weights"] = "ema" if ema else "model"
    state["extra_state"].pop("ema", None)  # the newest checkpoint's EMA is not what this file holds
    # load_checkpoint_to_cpu turned the saved config into an OmegaConf object; save it as plain
    # containers again, as fairseq's trainer does (torch.load(weights_only=True) reads only those)
    from omegaconf import OmegaConf

    if OmegaConf.is_config(state.get("cfg")):
        state["cfg"] = OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True)
    return state


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fairseq-hkd-average-checkpoints",
        description="Average the parameters of several fairseq checkpoints (e.g. the last 10 epochs).",
    )
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="checkpoint files, or one directory with --num-epoch/update-checkpoints")
    parser.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpoint{EPOCH}.pt")
    group.add_argument("--num-update-checkpoints", type=int,
                       help="average the last N checkpoint_{EPOCH}_{UPDATE}.pt")
    parser.add_argument("--checkpoint-upper-bound", type=int,
                        help="ignore checkpoints after this epoch (or update)")
    parser.add_argument("--ema", action="store_true",
                        help="average the EMA weights fairseq-train --store-ema keeps in each checkpoint; "
                             "with one input: that checkpoint's EMA as a checkpoint to decode")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)

    n = args.num_epoch_checkpoints or args.num_update_checkpoints
    if n is not None:
        if len(args.inputs) != 1 or not os.path.isdir(args.inputs[0]):
            parser.error("--num-epoch-checkpoints / --num-update-checkpoints take one directory in --inputs")
        by = "epoch" if args.num_epoch_checkpoints else "update"
        try:
            paths = last_checkpoints(args.inputs[0], n, by, args.checkpoint_upper_bound)
        except FileNotFoundError as e:
            parser.exit(1, f"error: {e}\n")
    else:
        paths = args.inputs
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            parser.error(f"not a checkpoint file: {missing[0]} (pass a directory with --num-epoch-checkpoints N)")
    logger.info("averaging the %s weights of %d checkpoints: %s", "EMA" if args.ema else "trained", len(paths),
                ", ".join(paths))
    try:
        state = average_checkpoints(paths, ema=args.ema)
    except ValueError as e:  # a user error: one line, no traceback
        parser.exit(1, f"error: {e}\n")
    from fairseq import checkpoint_utils

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    checkpoint_utils.torch_persistent_save(state, args.output)
    logger.info("wrote %s (%d tensors averaged over %d checkpoints)", args.output, len(state["model"]), len(paths))


if __name__ == "__main__":
    cli_main()
