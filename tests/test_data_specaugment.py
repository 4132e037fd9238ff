"""SpecAugment masks: whole frequency bands / frame spans, widths within bounds, adaptive cap."""
import numpy as np

from fairseq_hkd.data.specaugment import SpecAugmentConfig, spec_augment


def masked_runs(mask_1d):
    """Lengths of runs of True in a 1-D bool array."""
    runs, n = [], 0
    for m in list(mask_1d) + [False]:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_masks_are_bands_and_spans_within_widths():
    rng = np.random.default_rng(0)
    cfg = SpecAugmentConfig(freq_masks=1, freq_width=27, time_masks=1, time_width=50)
    for _ in range(200):
        x = rng.uniform(1.0, 2.0, size=(300, 80)).astype(np.float32)  # never 0 before masking
        y = spec_augment(x, cfg, rng)
        assert y.shape == x.shape and y is not x
        zero = y == 0
        full_cols = zero.all(axis=0)
        full_rows = zero.all(axis=1)
        # every zero lies in a fully masked band or span
        assert (zero == (full_cols[None, :] | full_rows[:, None])).all()
        assert sum(masked_runs(full_cols)) <= 27 and sum(masked_runs(full_rows)) <= 50
        np.testing.assert_array_equal(y[~zero], x[~zero])


def test_two_masks_each_and_widths_reach_their_bounds():
    rng = np.random.default_rng(1)
    cfg = SpecAugmentConfig()  # 2 x F=27, 2 x T=50
    widest_f = widest_t = 0
    for _ in range(300):
        y = spec_augment(np.ones((400, 80), np.float32), cfg, rng)
        f_runs, t_runs = masked_runs((y == 0).all(0)), masked_runs((y == 0).all(1))
        assert len(f_runs) <= 2 and len(t_runs) <= 2 and sum(f_runs) <= 54 and sum(t_runs) <= 100
        widest_f, widest_t = max(widest_f, *f_runs, 0), max(widest_t, *t_runs, 0)
    assert widest_f >= 27 and widest_t >= 50  # overlapping masks can exceed one width


def test_adaptive_cap_and_probability():
    rng = np.random.default_rng(2)
    cfg = SpecAugmentConfig(freq_masks=0, time_masks=2, time_width=50, adaptive_time_ratio=0.05)
    uncapped = SpecAugmentConfig(freq_masks=0, time_masks=2, time_width=50)
    capped_max = uncapped_max = 0
    for _ in range(100):
        capped_max = max(capped_max, int((spec_augment(np.ones((100, 80), np.float32), cfg, rng) == 0).all(1).sum()))
        uncapped_max = max(uncapped_max, int((spec_augment(np.ones((100, 80), np.float32), uncapped, rng) == 0).all(1).sum()))
    assert capped_max <= 10 < uncapped_max  # 2 masks of at most 5% of 100 frames each
    off = SpecAugmentConfig(prob=0.0)
    x = np.ones((100, 80), np.float32)
    assert not off.enabled() and np.array_equal(spec_augment(x, off, rng), x)
