"""Time-shift augmentation (data/time_shift.py): seeded draws in range, training items equal the fbank
of the waveform without its first n samples (computed here from the file), other splits untouched."""
import numpy as np
import pytest
import soundfile as sf

from corpus import setup_task
from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.data.time_shift import shift_samples


def test_draws_are_seeded_uniform_and_change_with_the_epoch():
    ids = [f"utt{i}" for i in range(2000)]
    draws = [shift_samples(160, 1, 1, u) for u in ids]
    assert draws == [shift_samples(160, 1, 1, u) for u in ids]  # repeatable
    assert min(draws) == 0 and max(draws) == 160
    counts = np.bincount(np.array(draws) // 40, minlength=5)[:4]  # four quarters of 0..159
    assert counts.min() > 0.8 * 2000 / 4.025 and counts.max() < 1.2 * 2000 / 4.025
    other_epoch = [shift_samples(160, 1, 2, u) for u in ids]
    other_seed = [shift_samples(160, 2, 1, u) for u in ids]
    assert np.mean(np.array(draws) == np.array(other_epoch)) < 0.05
    assert np.mean(np.array(draws) == np.array(other_seed)) < 0.05
    assert shift_samples(0, 1, 1, "utt0") == 0


def test_task_shifts_training_items_only(tiny_corpus):
    task = setup_task(tiny_corpus, "--cmvn", "none", "--time-shift-max-ms", "10", "--seed", "3")
    task.load_dataset("train")
    task.load_dataset("valid")
    train, valid = task.dataset("train"), task.dataset("valid")
    for epoch in (1, 2):
        train.set_epoch(epoch)
        shifted = 0
        for i, e in enumerate(train.entries):
            wav, rate = sf.read(e.audio, dtype="float32")
            assert rate == 16000 and wav.ndim == 1
            n = shift_samples(160, 3, epoch, e.id)
            got = train[i]["source"].numpy()
            np.testing.assert_allclose(got, fbank(wav[n:]), rtol=0, atol=1e-5)
            assert got.shape[0] <= train.sizes[i]  # the batching size stays an upper bound
            shifted += n > 0
        assert shifted >= len(train) - 1
    for i, e in enumerate(valid.entries):
        wav, _ = sf.read(e.audio, dtype="float32")
        np.testing.assert_allclose(valid[i]["source"].numpy(), fbank(wav), rtol=0, atol=1e-5)


def test_needs_the_waveforms_and_a_valid_size(tiny_corpus, monkeypatch):
    from fairseq_hkd.data.feature_store import FeatureStore

    task = setup_task(tiny_corpus, "--time-shift-max-ms", "10")
    monkeypatch.setattr(FeatureStore, "exists", staticmethod(lambda data, split: True))
    with pytest.raises(ValueError, match="--feature-store no"):
        task.load_dataset("train")
    with pytest.raises(ValueError, match="--time-shift-max-ms must be >= 0"):
        setup_task(tiny_corpus, "--time-shift-max-ms", "-5")
