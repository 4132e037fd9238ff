"""Input level matching: shift an utterance's log-mel features so that its speech level equals the
level the model was trained at.

Why: a model trained on recordings of one loudness (the synthesized demo corpus: every file peaks
near 0 dBFS, speech levels within +-2 dB) does not recognise the same speech a few dB quieter (the
2,600-update demo CIF on the test set: 22 % WER as recorded, 31 % at -6 dB, 84 % at -12 dB, 99 % at
-20 dB; matched: 24 % at every level; BENCHMARKS.md, "Input level"). Real recordings come at any level.

How: a gain of g dB multiplies the power spectrum by 10^(g/10), i.e. adds ``g * ln(10) / 10``
nats to every log-mel bin (exactly, above kaldi's energy floor). So matching the level needs no
waveform: the utterance's level is the 90th percentile over frames of the frame's mean log-mel
(``speech_level``; the loud frames, so pauses do not count), and ``match_level`` adds one constant
to all its features, at most ``MAX_GAIN_DB`` either way (``tolerance_db``: levels that close to the
target are left alone). Pure numpy (the torch-free runtime uses it). Streaming decoding does not
match levels (the level of an utterance is known only at its end).

The target, ``resolve_target``: a number (nats) given by the user or recorded by the task
(``--input-level``), or ``auto`` = the level implied by the training data's global CMVN mean:
mean(cmvn mean) + ``CMVN_OFFSET`` (the 90th-percentile frame level sits 6.0 nats above the
average frame in the synthesized corpus: 17.95 vs 11.96). Per-utterance CMVN removes any gain by
itself, and without CMVN statistics there is no reference: both resolve to no matching.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from fairseq_hkd.errors import UserError

NATS_PER_DB = math.log(10.0) / 10.0  # log-mel (power) change of a 1 dB gain
QUANTILE = 90.0  # speech level: this percentile of the frame levels
CMVN_OFFSET = 6.0  # nats from the mean training frame to the 90th-percentile frame level (synthesized corpus)
MAX_GAIN_DB = 40.0  # never shift by more than this (digital silence, a file of noise)
TOLERANCE_DB = 0.0  # levels within this of the target stay as recorded (0, 1.5, 3, 4.5 tried on heldout: BENCHMARKS.md)
LEVEL_SETTINGS = "auto | off | a level in nats (the 90th percentile of the frame's mean log-mel)"


def speech_level(feats: np.ndarray) -> float:
    """The level of log-mel features [T, F]: the ``QUANTILE``-th percentile over frames of each
    frame's mean over bins (float64)."""
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"speech_level needs [T > 0, F] features, got shape {feats.shape}")
    return float(np.percentile(feats.astype(np.float64).mean(axis=1), QUANTILE))


def match_level(feats: np.ndarray, target: Optional[float],
                tolerance_db: float = 0.0) -> Tuple[np.ndarray, float]:
    """``feats`` [T, F] brought to within ``tolerance_db`` of level ``target`` (None: unchanged): a
    level inside the band stays as recorded, one outside moves to the band's nearer edge. Returns
    the features (float32) and the gain applied in dB (at most +-``MAX_GAIN_DB``)."""
    if target is None:
        return feats, 0.0
    off_db = (target - speech_level(feats)) / NATS_PER_DB
    gain_db = float(np.clip(off_db - np.clip(off_db, -tolerance_db, tolerance_db), -MAX_GAIN_DB, MAX_GAIN_DB))
    if gain_db == 0.0:
        return feats, 0.0
    return (feats + np.float32(gain_db * NATS_PER_DB)).astype(np.float32, copy=False), gain_db


def resolve_target(setting: Union[str, float, None], cmvn_type: str,
                   cmvn_mean: Optional[Sequence[float]] = None) -> Optional[float]:
    """The target level (nats) of a setting (see ``LEVEL_SETTINGS``; None = off) for a model
    normalised with ``cmvn_type`` (global: ``cmvn_mean`` [F] its training mean)."""
    if setting is None or str(setting) == "off":
        return None
    if str(setting) != "auto":
        try:
            return float(setting)
        except ValueError:
            raise UserError(f"input level {setting!r}: give {LEVEL_SETTINGS}") from None
    if cmvn_type != "global" or cmvn_mean is None:
        return None  # utterance CMVN is gain-invariant; without statistics there is no reference
    return float(np.mean(np.asarray(cmvn_mean, dtype=np.float64))) + CMVN_OFFSET


def model_level(setting: Union[str, float, None], trained_with: Union[str, float, None], cmvn_type: str,
                cmvn_mean: Optional[Sequence[float]] = None,
                tolerance_db: Optional[float] = None) -> Tuple[Optional[float], float]:
    """(target, tolerance in dB; None: ``TOLERANCE_DB``) for decoding with a model. ``setting`` is the
    user's, where ``auto`` means the level the model trained at: its task's ``--input-level`` if that
    was on, else ``auto`` from its CMVN statistics."""
    if str(setting) == "auto" and trained_with is not None and str(trained_with) != "off":
        setting = trained_with
    if tolerance_db is None:
        tolerance_db = TOLERANCE_DB
    if tolerance_db < 0:
        raise UserError(f"input level tolerance must be >= 0 dB, got {tolerance_db:g}")
    return resolve_target(setting, cmvn_type, cmvn_mean), float(tolerance_db)


class LevelMatched:
    """``normalise(match_level(feats, target))``: the task's input normalisation with ``--input-level``
    (a class, not a closure, so that data-loader workers can pickle it)."""

    def __init__(self, target: float, normalise):
        self.target, self.normalise = float(target), normalise

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return self.normalise(match_level(feats, self.target)[0])
