"""scripts/fire_count_agreement.py: per-model counts and the averaged weights' count, by hand."""
import importlib.util
import os

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "fire_count_agreement", os.path.join(os.path.dirname(__file__), "..", "scripts", "fire_count_agreement.py"))
agreement = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(agreement)


def test_counts_by_hand():
    # utterance 0 (S = 2): model A sums 1.5 -> 1 fire + tail (0.5 >= 0.5) = 2, right; model B sums 1.3 -> 1, wrong;
    # averaged weights (0.55, 0.55, 0.3) sum 1.4 -> 1, wrong.
    # utterance 1 (S = 1): A sums 1.4 -> 1, right; B sums 0.2 -> 0 (tail 0.2 < 0.5), wrong;
    # averaged (0.6, 0.2) sums 0.8 -> 0 fires + tail = 1, right.
    a = [[np.array([0.6, 0.6, 0.3]), np.array([1.0, 0.4])],
         [np.array([0.5, 0.5, 0.3]), np.array([0.2, 0.0])]]
    r = agreement.count_agreement(a, [2, 1])
    assert r["correct"].tolist() == [[True, True], [False, False]]
    assert r["ensemble_correct"].tolist() == [False, True]
    np.testing.assert_allclose(r["ensemble_error"], [1.4 - 2, 0.8 - 1])


def test_models_of_other_frame_rates_are_refused():
    with pytest.raises(ValueError, match="one frame rate"):
        agreement.count_agreement([[np.array([0.5, 0.5])], [np.array([1.0])]], [1])
