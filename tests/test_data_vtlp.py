"""VTLP: the warped log-mel frames of a tone are the frames of the tone at the warped frequency (kaldi-native-fbank
computes both); the map against its formula by hand; each utterance warped by its own seeded factor on raw log-mel
(CMVN undone and redone), padding kept; only training updates see it."""
import numpy as np
import pytest
import torch

from corpus import random_padded_batch, setup_task
from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.data.vtlp import F_HI, VtlpConfig, draw_factor, source_frequency, vtlp_batch, warp


@pytest.mark.parametrize("hz,a", [(300, 1.2), (500, 1.1), (1000, 0.9), (2000, 1.15), (3000, 0.85), (3500, 0.92)])
def test_a_warped_tone_is_the_tone_at_the_warped_frequency(hz, a):
    """Below F_HI * min(a, 1) the map moves every frequency by a: the fbank of a tone at hz, warped, peaks in the
    bin where the fbank of a tone at a * hz peaks, and matches its profile around the peak."""
    t = np.arange(16000) / 16000
    tone = torch.from_numpy(fbank(0.3 * np.sin(2 * np.pi * hz * t)))
    moved = torch.from_numpy(fbank(0.3 * np.sin(2 * np.pi * a * hz * t)))
    got = warp(tone, a).mean(0)
    want = moved.mean(0)
    peak = int(want.argmax())
    assert int(got.argmax()) == peak and int(tone.mean(0).argmax()) != peak
    near = slice(max(0, peak - 1), peak + 2)  # the peak and its neighbours (further out: log of filter skirts)
    # within 2.5 nats of a 20+ nats peak over the floor (interpolating between bins is not the filter's shape)
    assert (got[near] - want[near]).abs().max() < 2.5


def test_the_map_by_hand():
    nyq = 8000.0
    g = np.array([0.0, 1000.0, 4000.0, 8000.0])
    # a = 1.25: linear part up to F_HI, f / a there; above it the line from (F_HI, F_HI / a) to (nyq, nyq)
    a = 1.25
    want = [0.0, 800.0, 3200.0, 8000.0]
    np.testing.assert_allclose(source_frequency(g, a, nyq), want)
    above = 6000.0
    np.testing.assert_allclose(source_frequency(np.array([above]), a, nyq),
                               [F_HI / a + (above - F_HI) * (nyq - F_HI / a) / (nyq - F_HI)])
    # a = 0.8: the boundary moves down to F_HI * 0.8 (its source is F_HI), continuous, nyq kept
    a = 0.8
    g_b = F_HI * a
    np.testing.assert_allclose(source_frequency(np.array([g_b - 1e-9, g_b, nyq]), a, nyq), [F_HI, F_HI, nyq])
    np.testing.assert_allclose(source_frequency(g, 1.0, nyq), g)  # a = 1: identity
    x = torch.randn(7, 80)
    assert warp(x, 1.0) is x


def test_batch_warps_each_utterance_by_its_own_draw_on_raw_log_mel():
    rng = np.random.default_rng(3)
    B, F = 4, 80
    src, lengths = random_padded_batch([50, 31, 50, 12], F, rng)
    mean, std = rng.standard_normal(F).astype(np.float32), (1 + rng.random(F)).astype(np.float32)
    cfg = VtlpConfig(0.85, 1.15, prob=0.8)
    seeds = [(5, 2, i, 5) for i in range(B)]
    out, factors = vtlp_batch(src, lengths, cfg, seeds, mean, std)
    m, s = torch.from_numpy(mean), torch.from_numpy(std)
    for b in range(B):
        a = draw_factor(cfg, np.random.default_rng(list(seeds[b])))  # independent redraw
        assert factors[b] == a and (a == 1.0 or 0.85 <= a <= 1.15)
        n = int(lengths[b])
        want = (warp(src[b, :n] * s + m, a) - m) / s if a != 1.0 else src[b, :n]
        torch.testing.assert_close(out[b, :n], want, rtol=0, atol=1e-5)
        assert torch.equal(out[b, n:], src[b, n:])  # batch padding as it was
    assert (factors != 1.0).any()
    alone, _ = vtlp_batch(src[1:2, :31], lengths[1:2], cfg, seeds[1:2], mean, std)  # another batch, same seed
    assert torch.equal(alone[0], out[1, :31])
    same, _ = vtlp_batch(src, lengths, VtlpConfig(0.85, 1.15, prob=0.0), seeds, mean, std)
    assert torch.equal(same, src) and not VtlpConfig(1.0, 1.0).enabled()


def test_task_option_errors_and_training_only(tiny_corpus):
    for args, says in [(("--vtlp-min", "1.1", "--vtlp-max", "0.9"), "--vtlp-min and --vtlp-max"),
                       (("--vtlp-min", "0.2", "--vtlp-max", "1.1"), "--vtlp-min and --vtlp-max"),
                       (("--vtlp-min", "0.9", "--vtlp-max", "1.1", "--vtlp-prob", "2"), "--vtlp-prob"),
                       (("--vtlp-min", "0.9", "--vtlp-max", "1.1", "--cmvn", "utterance"), "frame-wise")]:
        with pytest.raises(ValueError, match=says):
            setup_task(tiny_corpus, *args)
    assert setup_task(tiny_corpus).vtlp is None
    task = setup_task(tiny_corpus, "--spec-aug-prob", "0", "--vtlp-min", "0.8", "--vtlp-max", "1.2", "--cmvn", "none")
    task.load_dataset("train")
    ds = task.dataset("train")
    s = ds.collater([ds[j] for j in range(4)])
    aug = task.augment(s, 3)
    x, y = s["net_input"]["src_tokens"], aug["net_input"]["src_tokens"]
    assert x.shape == y.shape and torch.equal(aug["net_input"]["src_lengths"], s["net_input"]["src_lengths"])
    assert not torch.equal(x, y) and torch.equal(aug["target"], s["target"])
    assert torch.equal(task.augment(s, 3)["net_input"]["src_tokens"], y)  # the same update draws the same
