"""Tempo perturbation: each utterance's frames resampled along time by its own seeded factor, against a
float64 loop; only training updates see it; batching counts the longest an utterance can become."""
import math

import numpy as np
import pytest
import torch

from corpus import random_padded_batch, setup_task
from fairseq_hkd.data.tempo import TempoConfig, draw_factor, stretch, tempo_batch


def _interpolate_loop(x: np.ndarray, m: int) -> np.ndarray:
    """Linear interpolation of rows of x [n, F] at m evenly spaced positions from 0 to n - 1, in float64."""
    n, F = x.shape
    out = np.zeros((m, F))
    for j in range(m):
        p = j * (n - 1) / (m - 1) if m > 1 else 0.0
        i = min(int(math.floor(p)), n - 2) if n > 1 else 0
        w = p - i
        for f in range(F):
            out[j, f] = x[i, f] * (1 - w) + (x[i + 1, f] * w if n > 1 else 0.0)
    return out


def test_stretch_is_linear_interpolation_with_the_ends_kept():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 6))
    for m in (37, 10, 33, 41, 74, 2):
        got = stretch(torch.from_numpy(x), m).numpy()
        np.testing.assert_allclose(got, _interpolate_loop(x, m), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got[0], x[0])
        np.testing.assert_allclose(got[-1], x[-1], atol=1e-12)
    ramp = torch.arange(11, dtype=torch.float64).unsqueeze(1)  # frame i = i: a ramp stays a ramp
    np.testing.assert_allclose(stretch(ramp, 21)[:, 0].numpy(), np.arange(21) / 2, atol=1e-12)
    np.testing.assert_allclose(stretch(ramp, 6)[:, 0].numpy(), np.arange(6) * 2.0, atol=1e-12)
    assert stretch(ramp[:1], 4).tolist() == [[0.0]] * 4 and stretch(ramp, 1).tolist() == [[0.0]]


def test_batch_stretches_each_utterance_by_its_own_draw():
    rng = np.random.default_rng(1)
    B, F = 5, 4
    src, lengths = random_padded_batch([60, 41, 23, 60, 9], F, rng)
    cfg = TempoConfig(0.8, 1.25, prob=0.9)
    seeds = [(7, 3, i, 3) for i in range(B)]
    out, new_lengths, factors = tempo_batch(src, lengths, cfg, seeds)
    assert out.shape == (B, int(new_lengths.max()), F)
    for b in range(B):
        f = draw_factor(cfg, np.random.default_rng(list(seeds[b])))  # independent redraw
        assert factors[b] == f and (f == 1.0 or 0.8 <= f <= 1.25)
        n, m = int(lengths[b]), int(new_lengths[b])
        assert m == max(1, round(n / f))
        np.testing.assert_allclose(out[b, :m].numpy(), _interpolate_loop(src[b, :n].double().numpy(), m), atol=1e-5)
        assert (out[b, m:] == 0).all()  # batch padding stays zero
    # the same utterance with the same seed in another batch: the same frames
    alone, alone_len, _ = tempo_batch(src[2:3, :23], lengths[2:3], cfg, seeds[2:3])
    assert torch.equal(alone[0, : int(alone_len[0])], out[2, : int(new_lengths[2])])
    # probability 0, or factors 1: unchanged
    same, same_len, _ = tempo_batch(src, lengths, TempoConfig(0.8, 1.25, prob=0.0), seeds)
    assert torch.equal(same, src) and torch.equal(same_len, lengths)
    assert not TempoConfig(1.0, 1.0).enabled()
    # draws cover the range with about the probability asked
    draws = np.array([draw_factor(cfg, np.random.default_rng(s)) for s in range(3000)])
    moved = draws != 1.0
    assert 0.87 < moved.mean() < 0.93 and draws[moved].min() < 0.82 and draws[moved].max() > 1.23


def test_a_factor_that_leaves_cif_too_few_frames_is_not_used():
    """CIF fires at most once per encoder frame: an utterance whose sped-up length would give the encoder
    fewer frames than it has target units keeps its length."""
    src = torch.ones(2, 80, 3)
    lengths = torch.tensor([80, 80])
    cfg = TempoConfig(2.0, 2.0)  # 80 -> 40 frames
    by8 = lambda n: n // 8  # noqa: E731  (80 ms frames: 40 input frames -> 5)
    out, new_lengths, factors = tempo_batch(src, lengths, cfg, [(0,), (1,)], torch.tensor([5, 6]), by8)
    assert new_lengths.tolist() == [40, 80] and factors.tolist() == [2.0, 1.0]


def test_task_option_errors_batching_and_training_only(tiny_corpus):
    with pytest.raises(ValueError, match="--tempo-min and --tempo-max"):
        setup_task(tiny_corpus, "--tempo-min", "1.1", "--tempo-max", "0.9")
    with pytest.raises(ValueError, match="--tempo-prob"):
        setup_task(tiny_corpus, "--tempo-min", "0.9", "--tempo-max", "1.1", "--tempo-prob", "2")
    assert setup_task(tiny_corpus).tempo is None
    task = setup_task(tiny_corpus, "--spec-aug-prob", "0", "--tempo-min", "0.8", "--tempo-max", "1.2")
    task.load_dataset("train")
    task.load_dataset("valid")
    ds, valid = task.dataset("train"), task.dataset("valid")
    assert ds.batch_frame_scale == 1 / 0.8 and valid.batch_frame_scale == 1.0
    i = int(np.argmax(ds.src_sizes))
    assert ds.num_tokens(i) == math.ceil(int(ds.src_sizes[i]) / 0.8) and valid.num_tokens(0) == valid.src_sizes[0]
    # --max-tokens bounds the batch the model gets, after the stretch
    max_tokens = 2 * math.ceil(int(ds.src_sizes.max()) / 0.8) + 3
    stretched = 0
    for update in range(10):
        for batch in ds.batch_by_size(ds.ordered_indices(), max_tokens=max_tokens):
            s = ds.collater([ds[int(j)] for j in batch])
            aug = task.augment(s, update)
            x = aug["net_input"]["src_tokens"]
            assert x.shape[0] * x.shape[1] <= max_tokens
            assert torch.equal(aug["target"], s["target"])  # targets untouched
            stretched += int((aug["net_input"]["src_lengths"] != s["net_input"]["src_lengths"]).sum())
    assert stretched > 0
