"""Export a ``cif_asr`` checkpoint to an ONNX model directory (``fairseq-hkd-export``).

Usage::

    fairseq-hkd-export --path exp/demo-final/hkd/checkpoint_best.pt --out exp/demo-final/hkd/onnx
    fairseq-hkd-export --path ckpt.pt --out onnx-int8 --quantize int8
    fairseq-hkd-export --path ckpt.pt --out onnx-int8enc --quantize int8-encoder   # decoder fp32
    fairseq-hkd-export --path ckpt.pt --data data/synth --out onnx   # the data directory moved

    fairseq-hkd-transcribe --backend onnx --model-dir exp/demo-final/hkd/onnx a.wav

The directory layout and config.json are described in ``fairseq_hkd/runtime/model_dir.py``; the
graphs in ``fairseq_hkd/export/graphs.py``. Graphs are exported with torch.onnx's dynamo
exporter (onnxscript), batch and time axes dynamic, weights inside the .onnx files.
``--quantize int8`` writes the same directory with the graphs' MatMul/Gemm weights quantized to
int8 (onnxruntime's dynamic quantization: activations quantized per call); the CIF weight
predictor's last projection stays float, so fire positions do not move with the quantization.
``--quantize int8-encoder`` quantizes the encoder graph only: the decoder's small per-step matrix
products gain little from int8 and, on the demo's heldout set, caused half of int8's transcript
changes (BENCHMARKS.md, ONNX runtime).

Errors about the inputs (a checkpoint of another task, a missing dictionary or CMVN file, a
dictionary of another size than the model's output layer) are :class:`ExportError`, one line
naming the file; the console script prints them without a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_hkd.runtime.model_dir import CONFIG_NAME, FORMAT, VERSION, ModelDirError, read_dictionary

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8", "int8-encoder")

__all__ = ["ExportError", "load_checkpoint", "export_model_dir", "quantize_model_dir", "cli_main"]

ENCODER_FILE = "encoder.onnx"
DECODER_STEP_FILE = "decoder_step.onnx"
DECODER_NAR_FILE = "decoder.onnx"
CTC_FILE = "ctc.onnx"
DICT_FILE = "dict.txt"
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx",
                 "torch._export", "torch.utils._sympy")


class ExportError(ValueError):
    """A problem with the export's inputs; the message is one line and names the file."""


# 1. checkpoint, dictionary, CMVN ------------------------------------------------------------------
def load_checkpoint(path: str, data: Optional[str] = None):
    """-> (model (eval, float32, CPU), task, dict_path). Checks the task, the dictionary (present,
    same size as the model's output layer) before fairseq builds anything."""
    from fairseq import checkpoint_utils

    import fairseq_hkd  # noqa: F401  (registers the task and model; checkpoint shims)

    if not os.path.isfile(path):
        raise ExportError(f"checkpoint {path} not found")
    overrides = {"data": data} if data else {}
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides)
    except Exception as e:  # not a torch file, truncated, pickled classes missing ...
        raise ExportError(f"{path} is not a readable fairseq checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is None or "model" not in state:
        raise ExportError(f"{path} is not a fairseq checkpoint (no 'cfg' and 'model' entries)")
    task_name = cfg["task"].get("_name") if cfg.get("task") is not None else None
    if task_name != "cif_asr":
        raise ExportError(f"{path} is a checkpoint of task {task_name!r}; fairseq-hkd-export exports cif_asr "
                          "models only")
    task_cfg = cfg["task"]
    data_dir = task_cfg.get("data", None)
    dict_path = task_cfg.get("dict_path", None) or os.path.join(data_dir or "", "dict.txt")
    if not os.path.isfile(dict_path):
        raise ExportError(f"dictionary {dict_path} not found (checkpoint {path} was trained on data directory "
                          f"{data_dir!r}); pass --data DIR, a directory with its dict.txt")
    try:
        symbols = read_dictionary(dict_path)
    except ModelDirError as e:
        raise ExportError(str(e)) from None
    out_rows = _output_rows(state["model"])
    if out_rows is not None and out_rows != len(symbols):
        raise ExportError(f"dictionary {dict_path} has {len(symbols)} symbols but checkpoint {path} predicts "
                          f"{out_rows}: not the dictionary the model was trained with")
    try:  # the task's own checks (data directory, tokenizer of --unit wordpiece, ...) raise these
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, state=state)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"cannot rebuild the model of {path}: {e}") from None
    task.note_checkpoint(cfg)  # the CTC weight of checkpoints saved before 2026-12-03
    model = models[0].float().cpu().eval()
    return model, task, dict_path


def _output_rows(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    w = state_dict.get("decoder.output_projection.weight")
    return None if w is None else int(w.shape[0])


def frontend_config(task) -> Dict:
    """What the runtime's front end needs: fbank options, CMVN statistics, input checks."""
    from fairseq_hkd.data.audio import SAMPLE_RATE
    from fairseq_hkd.data.fbank import WAVE_SCALE, fbank_options

    cfg = task.cfg
    cmvn = {"type": str(cfg.cmvn)}
    if cmvn["type"] == "global":
        stats = cfg.cmvn_stats or os.path.join(cfg.data, "cmvn.npz")
        if not os.path.isfile(stats):
            raise ExportError(f"global CMVN statistics {stats} not found (the model was trained with --cmvn "
                              "global); pass --data DIR with its cmvn.npz")
        npz = np.load(stats)
        # float64 in the file; the runtime casts to float32 as GlobalCmvn does (JSON keeps them exactly)
        cmvn.update(mean=[float(x) for x in npz["mean"]], std=[float(x) for x in npz["std"]],
                    source=os.path.abspath(stats))
    return {
        "sample_rate": SAMPLE_RATE,
        "wave_scale": WAVE_SCALE,
        "fbank": fbank_options().as_dict(),
        "cmvn": cmvn,
        "input_level": str(getattr(cfg, "input_level", "off")),  # the training setting (data/level.py)
        "min_source_frames": int(cfg.min_source_frames),
        "strict_sample_rate": bool(cfg.strict_sample_rate),
        "multichannel": str(cfg.multichannel),
    }


# 2. graphs --------------------------------------------------------------------------------------
def _quiet_exporter_logs() -> None:
    """Importing fairseq's models sets the root logger to DEBUG; the exporter's passes then log
    thousands of lines."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _export(module: torch.nn.Module, args: Tuple, path: str, input_names, output_names, dynamic_shapes) -> None:
    import warnings

    _quiet_exporter_logs()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, dynamo=True, external_data=False, input_names=input_names,
                          output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    import onnx

    onnx.checker.check_model(path)


def export_encoder(model, path: str) -> None:
    from fairseq_hkd.export.graphs import EncoderGraph

    ds = model.encoder.downsample
    frames = 16 * ds + 3  # an example that survives the subsampling with several frames
    x = torch.randn(2, frames, model.cfg.input_feat_dim)
    lengths = torch.tensor([frames, frames - ds - 1])
    batch, time_ = torch.export.Dim("batch", min=1), torch.export.Dim("frames", min=1)
    _export(EncoderGraph(model), (x, lengths), path, ["fbank", "fbank_lengths"],
            ["encoder_out", "encoder_lengths", "alpha"], ({0: batch, 1: time_}, {0: batch}))


def export_ctc(model, path: str) -> None:
    from fairseq_hkd.export.graphs import CtcGraph

    x = torch.randn(2, 7, model.encoder_embed_dim)
    batch, time_ = torch.export.Dim("batch", min=1), torch.export.Dim("frames", min=1)
    _export(CtcGraph(model), (x,), path, ["encoder_out"], ["ctc_lprobs"], ({0: batch, 1: time_},))


def export_decoder_step(model, path: str) -> None:
    from fairseq_hkd.export.graphs import DecoderStepGraph, cache_shape

    rows, steps, C = 3, 2, model.encoder_embed_dim
    cache = torch.randn(*cache_shape(model, rows, steps))
    args = (torch.tensor([2, 5, 6]), torch.randn(rows, C), torch.randn(rows, C), torch.tensor(steps),
            cache, cache.clone())
    R, S = torch.export.Dim("rows", min=1), torch.export.Dim("steps", min=0)
    _export(DecoderStepGraph(model), args, path,
            ["prev_tokens", "c_prev", "c_cur", "step", "cache_key", "cache_value"],
            ["lprobs", "new_cache_key", "new_cache_value"],
            ({0: R}, {0: R}, {0: R}, None, {1: R, 3: S}, {1: R, 3: S}))


def export_decoder_nar(model, path: str) -> None:
    from fairseq_hkd.export.graphs import NarDecoderGraph

    emb = torch.randn(2, 5, model.encoder_embed_dim)
    lengths = torch.tensor([5, 3])
    B, N = torch.export.Dim("batch", min=1), torch.export.Dim("tokens", min=1)
    _export(NarDecoderGraph(model), (emb, lengths), path, ["cif_embeddings", "cif_lengths"], ["lprobs"],
            ({0: B, 1: N}, {0: B}))


def quantize_int8(src: str, dst: str, exclude_alpha_head: bool = False) -> None:
    """onnxruntime dynamic quantization of MatMul/Gemm weights (int8, per output channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = _alpha_head_nodes(src) if exclude_alpha_head else []
    quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=exclude)


def _alpha_head_nodes(path: str):
    """Names of the MatMul/Gemm nodes on the path to the ``alpha`` output after the last
    MatMul-free stretch: the weight predictor's Linear(C -> 1)."""
    import onnx

    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    out, seen = [], set()
    stack = ["alpha"]
    while stack:  # walk back from alpha until the first MatMul/Gemm on each branch
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            out.append(node.name)
            continue
        stack.extend(node.input)
    return out


# 3. the directory -------------------------------------------------------------------------------
def export_model_dir(model, task, dict_path: str, out_dir: str, quantize: Optional[str] = None,
                     checkpoint: Optional[str] = None) -> Dict:
    """Write the model directory (fp32 graphs; with ``quantize="int8"`` exported to a temporary
    directory and quantized into ``out_dir``); returns its config."""
    import fairseq_hkd

    frontend = frontend_config(task)
    if quantize is not None:
        if quantize not in QUANTIZE_CHOICES:
            raise ExportError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            export_model_dir(model, task, dict_path, tmp, None, checkpoint)
            return quantize_model_dir(tmp, out_dir, decoder=quantize == "int8")
    os.makedirs(out_dir, exist_ok=True)
    ar = bool(model.decoder.autoregressive)
    files = {"encoder": ENCODER_FILE, "decoder": DECODER_STEP_FILE if ar else DECODER_NAR_FILE,
             "ctc": CTC_FILE, "dictionary": DICT_FILE}
    t0 = time.perf_counter()
    export_encoder(model, os.path.join(out_dir, ENCODER_FILE))
    export_ctc(model, os.path.join(out_dir, CTC_FILE))
    (export_decoder_step if ar else export_decoder_nar)(model, os.path.join(out_dir, files["decoder"]))
    logger.info(f"exported the graphs in {time.perf_counter() - t0:.1f} s")
    shutil.copyfile(dict_path, os.path.join(out_dir, DICT_FILE))
    attn = model.decoder.layers[0].self_attn
    dictionary = task.target_dictionary
    config = {
        "format": FORMAT,
        "version": VERSION,
        "precision": "fp32",
        "files": files,
        "frontend": frontend,
        "units": {"unit": str(task.cfg.unit), "lowercase": bool(task.cfg.lowercase)},
        "dictionary": {"size": len(dictionary), "bos": dictionary.bos(), "pad": dictionary.pad(),
                       "eos": dictionary.eos(), "unk": dictionary.unk()},
        "cif": {"threshold": float(model.cif.threshold), "tail_threshold": float(model.cif.tail_threshold)},
        "search": {"eos_slack": int(task.cfg.cif_eos_slack), "count_search": int(task.cfg.cif_count_search),
                   "ctc_weight": task.decoding_ctc_weight(), "inner_eos": task.decoding_inner_eos()},
        "encoder": {"downsample": int(model.encoder.downsample), "embed_dim": int(model.encoder_embed_dim)},
        "decoder": {"type": "autoregressive" if ar else "non_autoregressive", "layers": len(model.decoder.layers),
                    "heads": int(attn.num_heads), "head_dim": int(attn.head_dim)},
        "source": {"checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
                   "arch": getattr(model.cfg, "_name", None), "fairseq_hkd": fairseq_hkd.__version__,
                   "torch": torch.__version__, "onnx_opset": _opset(os.path.join(out_dir, ENCODER_FILE))},
    }
    _write_config(out_dir, config)
    return config


def quantize_model_dir(src_dir: str, out_dir: str, decoder: bool = True) -> Dict:
    """An fp32 model directory -> the same with int8 MatMul/Gemm weights (``quantize_int8``; the
    CIF weight predictor's last projection stays float); ``decoder=False`` keeps the decoder graph
    fp32 (precision ``int8-encoder``). Returns the new config."""
    from fairseq_hkd.runtime.model_dir import read_model_dir

    src = read_model_dir(src_dir)
    if src.config["precision"] != "fp32":
        raise ExportError(f"{os.path.join(src_dir, CONFIG_NAME)}: precision {src.config['precision']}, "
                          "quantization needs an fp32 export")
    os.makedirs(out_dir, exist_ok=True)
    for key, name in src.config["files"].items():
        if key in ("dictionary", "ctc") or (key != "encoder" and not decoder):  # CTC: one matrix, kept fp32
            shutil.copyfile(src.file(key), os.path.join(out_dir, name))
        else:
            quantize_int8(src.file(key), os.path.join(out_dir, name), exclude_alpha_head=key == "encoder")
    config = dict(src.config, precision="int8" if decoder else "int8-encoder")
    _write_config(out_dir, config)
    return config


def _write_config(out_dir: str, config: Dict) -> None:
    with open(os.path.join(out_dir, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)


def _opset(path: str) -> int:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return int(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")))


# 4. console script ------------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairseq-hkd-export",
                                description="Export a cif_asr checkpoint to an ONNX model directory "
                                            "(for fairseq-hkd-transcribe --backend onnx)")
    p.add_argument("--path", required=True, help="checkpoint (.pt) of a cif_asr model")
    p.add_argument("--out", required=True, help="output directory (created; files in it are replaced)")
    p.add_argument("--data", help="data directory with dict.txt (and cmvn.npz for global CMVN); default: "
                                  "the checkpoint's")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES,
                   help="int8: the MatMul/Gemm weights of every graph to int8 (smallest, fastest); "
                        "int8-encoder: the encoder's only, the decoder stays fp32 (closer to fp32's "
                        "transcripts; BENCHMARKS.md)")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stderr)
    try:
        model, task, dict_path = load_checkpoint(args.path, args.data)
        config = export_model_dir(model, task, dict_path, args.out, args.quantize, checkpoint=args.path)
    except (ExportError, FileNotFoundError, ModelDirError) as e:
        raise SystemExit(f"fairseq-hkd-export: error: {e}")
    logging.getLogger().setLevel(logging.INFO)
    sizes = ", ".join(f"{name} {os.path.getsize(os.path.join(args.out, name)) / 1e6:.1f} MB"
                      for name in config["files"].values())
    logger.info(f"wrote {args.out} ({config['precision']}, {config['decoder']['type']} decoder): {sizes}")


if __name__ == "__main__":
    cli_main()
