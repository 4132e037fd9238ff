"""Transitional re-exports of the feature modules this file was split into (issue 14):
``fbank.py`` (log-mel fbank), ``cmvn.py`` (CMVN), ``feature_store.py`` (the store) and
``cli_features.py`` (``fairseq-hkd-feature-store``, ``fairseq-hkd-cmvn``).

Kept only because ``generation/plot.py`` and ``generation/transcribe.py`` still import from here;
import from the modules above and delete this file once they do.
"""
from fairseq_hkd.data.cli_features import cmvn_cli_main, store_cli_main  # noqa: F401
from fairseq_hkd.data.cmvn import CMVN_TYPES, CmvnAccumulator, GlobalCmvn, build_cmvn, utterance_cmvn  # noqa: F401
from fairseq_hkd.data.fbank import (  # noqa: F401
    FRAME_LENGTH_MS, FRAME_SHIFT_MS, NUM_MEL_BINS, WAVE_SCALE, fbank, fbank_options, num_frames,
)
from fairseq_hkd.data.feature_store import FeatureStore, iter_features, store_paths, write_store  # noqa: F401
