"""ONNX export of cif_asr checkpoints (``fairseq-hkd-export``): ``graphs.py`` the exportable
modules, ``onnx_export.py`` the checkpoint checks, the model directory and the console script.
Needs torch, fairseq, onnx, onnxscript and onnxruntime (for ``--quantize``); the runtime that
reads the directory (``fairseq_hkd/runtime``) needs neither torch nor fairseq."""
