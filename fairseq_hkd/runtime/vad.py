"""Silero VAD on onnxruntime, without torch: speech probabilities per 32 ms frame, many frames per call.

The ONNX runtime's transcriber splits long files at pauses with this detector (the PyTorch
transcriber uses ``generation/vad.py``). It runs ``silero_vad_16k_sequence.onnx`` from the installed
``silero-vad==6.2.3`` wheel (no download): the 16 kHz network over a block of N frames in one call,
each 512-sample frame with the 64 samples before it, the LSTM state carried between calls. Same
probabilities as ``generation/vad.py``'s ``SileroVad`` on the same audio (within 1e-4,
``tests/test_transcribe_long.py``). The package itself is not imported (it imports torch).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

__all__ = ["OnnxSileroVad", "SileroFrames", "silero_model_path"]


def silero_model_path(name: str = "silero_vad.jit") -> str:
    """Path of a model file inside the installed silero-vad package (not imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("silero-vad is not installed: pip install --no-deps silero-vad==6.2.3 "
                          "(its extras would pull torchaudio; scripts/setup.sh does this)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the silero-vad package; reinstall silero-vad==6.2.3")
    return path


class SileroFrames:
    """What both Silero detectors share (this one and ``generation/vad.py``'s): 16 kHz frames of 512
    samples, each fed with the 64 samples before it (zeros before a file's first frame), and an LSTM
    of 128 units whose state the subclass carries. Subclasses: ``frames`` [N, 512] float32 ->
    speech probabilities [N]; consecutive calls continue the same audio, :meth:`reset` starts a new file.
    """

    frame_samples = 512
    context_samples = 64
    hidden = 128

    def reset_context(self) -> None:
        self.context = np.zeros(self.context_samples, dtype=np.float32)

    def with_context(self, frames: np.ndarray) -> np.ndarray:
        """[N, 512] float32 (N >= 1, from :meth:`checked`) -> [N, 576]: each frame after the 64
        samples before it; the last frame's tail becomes the context of the next call."""
        ctx = np.concatenate([self.context[None], frames[:-1, -self.context_samples:]], 0)  # [N, 64]
        self.context = frames[-1, -self.context_samples:].copy()
        return np.concatenate([ctx, frames], 1)

    def checked(self, frames) -> np.ndarray:
        """``frames`` as a C-contiguous float32 [N, 512] array (anything else: an assertion)."""
        x = np.ascontiguousarray(frames, dtype=np.float32)
        assert x.ndim == 2 and x.shape[1] == self.frame_samples, f"frames {x.shape}: expected [N, {self.frame_samples}]"
        return x


class OnnxSileroVad(SileroFrames):
    """Streaming Silero VAD at 16 kHz on onnxruntime (see :class:`SileroFrames`)."""

    def __init__(self, path: str | None = None, threads: int = 1):
        import onnxruntime as ort

        from fairseq_hkd.runtime.recognizer import session_options  # the runtime's CPU session settings

        self.session = ort.InferenceSession(path or silero_model_path("silero_vad_16k_sequence.onnx"),
                                            session_options(threads), providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self.h = np.zeros((1, 1, self.hidden), dtype=np.float32)
        self.c = np.zeros((1, 1, self.hidden), dtype=np.float32)
        self.reset_context()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = self.checked(frames)
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        probs, self.h, self.c = self.session.run(None, {"input": self.with_context(frames), "h": self.h, "c": self.c})
        return np.asarray(probs, dtype=np.float32).reshape(-1)
