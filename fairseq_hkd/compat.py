"""Every fairseq / torch / numpy version shim of the package lives here, each with its reason.

Imported first by ``fairseq_hkd/__init__.py``, so the shims are in place before fairseq-train,
fairseq-generate or a Python user touch a checkpoint or a batch.
"""
import argparse
import collections
import functools
import sys
import types
import typing
from typing import List

import numpy as np
import torch


# 1. Checkpoints under torch.load(weights_only=True) -------------------------------------------------
# Reason: torch >= 2.6 loads with weights_only=True by default and fairseq 0.12's load_checkpoint_to_cpu
# calls torch.load without the argument; fairseq checkpoints pickle an argparse.Namespace ("args", and
# cfg.model for argparse-registered archs), numpy scalars/dtypes (best/val loss in extra_state) and, in
# older fairseq versions' checkpoints, omegaconf containers. We allow exactly these types rather than
# turning weights_only off.
def _safe_checkpoint_globals() -> List:
    """The non-tensor types found in fairseq 0.12 checkpoints (checked by tests/test_compat.py)."""
    safe = [argparse.Namespace, np.dtype, np.ndarray]
    # numpy scalars pickle as numpy.core.multiarray.scalar(dtype, bytes) (numpy._core in numpy 2).
    try:
        from numpy._core.multiarray import scalar as np_scalar, _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar as np_scalar, _reconstruct
    safe += [np_scalar, _reconstruct]
    # numpy >= 1.25 pickles dtypes via their classes (numpy.dtypes.Float64DType, ...).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    # omegaconf containers (a DictConfig cfg, as in checkpoints of older fairseq versions): their node
    # and metadata classes, plus the builtin types and typing.Any they record as key/element types.
    try:
        import omegaconf
        from omegaconf import nodes
        from omegaconf.base import ContainerMetadata, Metadata

        safe += [omegaconf.DictConfig, omegaconf.ListConfig, ContainerMetadata, Metadata, nodes.AnyNode,
                 nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
                 typing.Any, dict, list, int, float, str, bool, collections.defaultdict]
    except ImportError:
        pass
    return safe


def allow_fairseq_checkpoints() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4; older torch loads everything anyway
        add(_safe_checkpoint_globals())


allow_fairseq_checkpoints()


# 2. Batching keeps the last batch -----------------------------------------------------------------
# Reason: fairseq 0.12's data_utils.batch_by_size drops the final batch when its size is not a
# multiple of --required-batch-size-multiple (default 8), silently losing validation / test
# utterances (and the same shortest training utterances every epoch). We put them back.
def batch_by_size_keep_remainder(batches: List[np.ndarray], indices: np.ndarray) -> List[np.ndarray]:
    """``batches``: fairseq's consecutive partition of ``indices`` (possibly missing its tail)."""
    covered = sum(len(b) for b in batches)
    if covered < len(indices):
        batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
    return batches


# 3. `fairseq-train --task cif_asr --help` lists the task's options ---------------------------------
# Reason: fairseq 0.12's options.parse_args_and_arch hands -h/--help to argparse before it adds the
# task / model / criterion options, so --help never shows them. With --help we first parse the other
# arguments (which adds those options; a missing DATA positional is ignored), then print the help.
def _parse_args_and_arch_with_full_help(original):
    @functools.wraps(original)
    def parse_args_and_arch(parser, input_args=None, parse_known=False, suppress_defaults=False,
                            modify_parser=None):
        argv = list(sys.argv[1:] if input_args is None else input_args)
        if suppress_defaults or not ({"-h", "--help"} & set(argv)):
            return original(parser, input_args, parse_known, suppress_defaults, modify_parser)

        class _StopParsing(Exception):
            pass

        def stop(message):
            raise _StopParsing(message)

        parser.error = stop  # argparse reports a missing DATA through parser.error
        rest = [a for a in argv if a not in ("-h", "--help")]
        try:
            original(parser, rest, True, False, modify_parser)
        except _StopParsing:
            pass
        except RuntimeError:  # no (or an unknown) --arch: add the task and registry options ourselves
            _add_component_options(parser, rest)
        finally:
            del parser.error
        parser.print_help()
        sys.exit(0)

    parse_args_and_arch.__hkd_full_help__ = True
    return parse_args_and_arch


def _add_component_options(parser, argv) -> None:
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_REGISTRY

    known, _ = parser.parse_known_args(argv)
    if getattr(known, "task", None) in TASK_REGISTRY:
        TASK_REGISTRY[known.task].add_args(parser)
    for name, registry in REGISTRIES.items():
        cls = registry["registry"].get(getattr(known, name, None))
        if cls is not None and hasattr(cls, "add_args"):
            cls.add_args(parser)
        elif cls is not None and hasattr(cls, "__dataclass"):
            gen_parser_from_dataclass(parser, cls.__dataclass())


def _install_full_help() -> None:
    from fairseq import options

    if not getattr(options.parse_args_and_arch, "__hkd_full_help__", False):
        options.parse_args_and_arch = _parse_args_and_arch_with_full_help(options.parse_args_and_arch)


_install_full_help()


# 4. Does this CPU compute bf16 natively? -----------------------------------------------------------
# Reason: bf16 autocast on CPU pays only where oneDNN has native bf16 kernels (AVX512-BF16 or AMX);
# elsewhere it emulates them and is slower than float32. torch exposes the check privately
# (torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported, torch >= 2.1); older versions, and
# other platforms, fall back to the kernel's CPU flags.
def cpu_has_native_bf16() -> bool:
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [c for c in checks if c is not None]
    if checks:
        return any(bool(c()) for c in checks)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# 5. numpy.compat for fairseq's language-model datasets ---------------------------------------------
# Reason: numpy 2 removed numpy.compat, and fairseq 0.12 still reads np.compat.long in TokenBlockDataset
# (fairseq-train --task language_modeling --sample-break-mode eos: the LM recipes examples/*/lm.sh, which
# pass --user-dir fairseq_hkd for this) and in LanguagePairDataset. We put back that one alias (int).
def _numpy_compat_long() -> None:
    try:
        np.compat.long  # noqa: B018
    except AttributeError:
        np.compat = types.SimpleNamespace(long=int)


_numpy_compat_long()


# 6. A criterion without parameters is handed the checkpoint's criterion state ----------------------
# Reason: fairseq 0.12's Trainer.load_checkpoint passes state["criterion"] to the criterion's
# load_state_dict (strictly) only when the criterion has parameters, and otherwise drops it without a
# word: `--criterion cif` started from a cif_hkd checkpoint would lose the distillation projections
# silently. Criteria that set `load_state_without_parameters = True` (ours, which log what they drop)
# get the state right after the checkpoint is read; criteria with parameters load as in fairseq.
def _load_checkpoint_handing_criterion_state(original):
    @functools.wraps(original)
    def load_checkpoint(self, filename, *args, **kwargs):
        from fairseq import checkpoint_utils, utils

        criterion = self.get_criterion()
        if not getattr(criterion, "load_state_without_parameters", False) or utils.has_parameters(criterion):
            return original(self, filename, *args, **kwargs)
        read = checkpoint_utils.load_checkpoint_to_cpu  # what Trainer.load_checkpoint reads the file with

        def read_and_hand_over(path, *a, **kw):
            state = read(path, *a, **kw)
            criterion.load_state_dict(state.get("criterion"), strict=True)
            return state

        checkpoint_utils.load_checkpoint_to_cpu = read_and_hand_over
        try:
            return original(self, filename, *args, **kwargs)
        finally:
            checkpoint_utils.load_checkpoint_to_cpu = read

    load_checkpoint.__hkd_criterion_state__ = True
    return load_checkpoint


def _install_criterion_state_handover() -> None:
    from fairseq.trainer import Trainer

    if not getattr(Trainer.load_checkpoint, "__hkd_criterion_state__", False):
        Trainer.load_checkpoint = _load_checkpoint_handing_criterion_state(Trainer.load_checkpoint)


_install_criterion_state_handover()


# 7. fairseq-train --store-ema on a model with integer buffers ---------------------------------------
# Reason: fairseq 0.12's EMA decays every state-dict entry in place (`ema_param.mul_(decay)`), which
# fails on integer buffers ("result type Float can't be cast to the desired output type Long"): our
# conformer's BatchNorm counts its batches in a long `num_batches_tracked`. The EMA takes keys to copy
# instead of decay (`skip_keys`) but the Trainer builds it without them; we pass the integer entries.
def _build_ema_copying_integer_buffers(original):
    @functools.wraps(original)
    def build_ema(model, cfg, device):
        ema = original(model, cfg, device)
        ema.skip_keys = set(ema.skip_keys) | {
            key for key, value in model.state_dict().items()
            if torch.is_tensor(value) and not torch.is_floating_point(value)}
        return ema

    build_ema.__hkd_integer_buffers__ = True
    return build_ema


def _install_ema_integer_buffers() -> None:
    from fairseq import trainer

    if not getattr(trainer.build_ema, "__hkd_integer_buffers__", False):
        trainer.build_ema = _build_ema_copying_integer_buffers(trainer.build_ema)


_install_ema_integer_buffers()
