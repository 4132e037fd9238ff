"""The runtime's front end: audio file -> normalised fbank [T, F], from config.json's ``frontend``.

The same computation as training and ``fairseq-hkd-transcribe`` (``data/audio.py``,
``data/fbank.py``, ``data/cmvn.py``), with the options read from the exported config: the
kaldi-native-fbank options dict (``FbankOptions.as_dict()`` at export), the waveform scale, the
input level matching (``data/level.py``; ``input_level`` = the training setting, absent before
2026-12-03 = off) and the CMVN statistics (float32, as ``GlobalCmvn``). Files at another sample rate are resampled by
``data/audio.py`` with scipy, which is then needed (or rejected with ``strict_sample_rate``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from fairseq_hkd.data.audio import AudioError, read_audio
from fairseq_hkd.data.cmvn import utterance_cmvn
from fairseq_hkd.data.level import match_level, model_level

__all__ = ["Frontend"]


class Frontend:
    """``features(wav)`` and ``read(path)`` as configured by config.json's ``frontend`` dict;
    ``input_level``, ``input_level_tolerance_db``: as ``fairseq-hkd-transcribe --input-level[-tolerance]``."""

    def __init__(self, cfg: Dict, input_level: str = "auto", input_level_tolerance_db: Optional[float] = None):
        import kaldi_native_fbank as knf

        self.cfg = cfg
        self.sample_rate = int(cfg["sample_rate"])
        self.wave_scale = float(cfg["wave_scale"])
        self.options = knf.FbankOptions.from_dict(cfg["fbank"])
        self.num_bins = int(cfg["fbank"]["mel_opts"]["num_bins"])
        self.min_frames = int(cfg.get("min_source_frames", 1))
        cmvn = cfg["cmvn"]
        self.cmvn_type = cmvn["type"]
        if self.cmvn_type == "global":
            self.mean = np.asarray(cmvn["mean"], dtype=np.float64).astype(np.float32)
            self.std = np.asarray(cmvn["std"], dtype=np.float64).astype(np.float32)
        elif self.cmvn_type not in ("utterance", "none"):
            raise ValueError(f"unknown CMVN type {self.cmvn_type!r} in the model's config.json")
        self.level_target, self.level_tolerance_db = model_level(
            input_level, cfg.get("input_level", "off"), self.cmvn_type, cmvn.get("mean"), input_level_tolerance_db)

    def fbank(self, wav: np.ndarray) -> np.ndarray:
        """float32 [n] in [-1, 1] -> log-mel fbank float32 [T, F] (``data/fbank.fbank``)."""
        import kaldi_native_fbank as knf

        extractor = knf.OnlineFbank(self.options)
        extractor.accept_waveform(self.sample_rate, np.asarray(wav, dtype=np.float32) * self.wave_scale)
        extractor.input_finished()
        n = extractor.num_frames_ready
        out = np.empty((n, self.num_bins), dtype=np.float32)
        for i in range(n):
            out[i] = extractor.get_frame(i)
        return out

    def features(self, wav: np.ndarray) -> np.ndarray:
        """Mono float32 [n] at the model's rate -> normalised fbank [T, F] float32."""
        feats = match_level(self.fbank(wav), self.level_target, self.level_tolerance_db)[0]
        if self.cmvn_type == "global":
            if feats.shape[1] != self.mean.shape[0]:
                raise ValueError(f"CMVN statistics have dim {self.mean.shape[0]}, features have {feats.shape[1]}")
            feats = (feats - self.mean) / self.std
        elif self.cmvn_type == "utterance":
            feats = utterance_cmvn(feats)
        return np.ascontiguousarray(feats, dtype=np.float32)

    def read(self, path: str, where: str = "") -> Tuple[np.ndarray, float]:
        """Audio file -> (features [T, F], duration in seconds); too short a file is an AudioError."""
        wav = read_audio(path, where=where, sample_rate=self.sample_rate,
                         strict_sample_rate=bool(self.cfg.get("strict_sample_rate", False)),
                         multichannel=self.cfg.get("multichannel", "downmix"))
        feats = self.features(wav)
        duration = len(wav) / self.sample_rate
        if feats.shape[0] < self.min_frames:
            raise AudioError(f"{path}: {duration:.3f} s of audio gives {feats.shape[0]} fbank frames, fewer than "
                             f"the model's minimum {self.min_frames}")
        return feats, duration
