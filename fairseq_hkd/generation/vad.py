"""Speech probabilities per 32 ms frame from Silero VAD (``silero-vad==6.2.3``), many frames per call.

The stock model (``silero_vad.load_silero_vad()``) is called once per 512-sample frame with the
LSTM state carried in Python: RTF 0.02 on one CPU thread, more than decoding the cif_tiny model
costs. :class:`SileroVad` runs the same TorchScript modules of the same file
(``silero_vad/data/silero_vad.jit``, shipped in the wheel: no download) over a whole block of
frames: the STFT and the convolutional encoder on [N, 576] (each 512-sample frame with the 64
samples before it, as the stock model keeps them), the LSTM cell's weights in one ``nn.LSTM``
over the N steps, then the model's own output head. Same probabilities as the stock per-frame
loop (``tests/test_transcribe_long.py`` compares them, within 1e-4); 5x faster (RTF 0.0039 vs
0.020 on one thread, BENCHMARKS.md).

The package is loaded without importing ``silero_vad`` itself: its ``model.py`` calls
``torch.set_num_threads(1)`` on import, which would slow the ASR model on a multi-core machine.
"""
from __future__ import annotations

import numpy as np
import torch

from fairseq_hkd.runtime.vad import SileroFrames, silero_model_path  # torch-free, shared with the ONNX detector

__all__ = ["SileroVad", "silero_model_path"]


class SileroVad(SileroFrames):
    """Streaming Silero VAD at 16 kHz on torch (see :class:`SileroFrames`)."""

    def __init__(self, path: str | None = None):
        jit = torch.jit.load(path or silero_model_path(), map_location="cpu").eval()
        model = jit._model  # the 16 kHz network (jit._model_8k is the 8 kHz one)
        self.stft, self.encoder, self.head = model.stft, model.encoder, model.decoder.decoder
        cell = model.decoder.rnn  # nn.LSTMCell(128, 128)
        self.lstm = torch.nn.LSTM(self.hidden, self.hidden)
        with torch.no_grad():
            for ours, theirs in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh"),
                                 ("bias_ih_l0", "bias_ih"), ("bias_hh_l0", "bias_hh")):
                getattr(self.lstm, ours).copy_(getattr(cell, theirs))
        self.lstm.eval()
        self.reset()

    def reset(self) -> None:
        self.state = None  # (h, c), each [1, 1, 128]
        self.reset_context()

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = self.checked(frames)
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        feats = self.encoder(self.stft(torch.from_numpy(self.with_context(frames))))  # [N, 128, 1]
        h, self.state = self.lstm(feats.squeeze(-1)[:, None, :], self.state)  # h [N, 1, 128]
        probs = self.head(h.reshape(-1, self.hidden, 1))  # [N, 1, 1]
        return probs.reshape(-1).numpy()
