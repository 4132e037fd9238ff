"""Edge-silence augmentation: each utterance kept intact between silence frames of the bank, drawn
per utterance from its own seed; only training updates see it; per-utterance CMVN is refused."""
import numpy as np
import pytest
import torch

from corpus import random_padded_batch, setup_task
from fairseq_hkd.data.edge_silence import EdgeSilenceConfig, NOISE_LEVELS_DBFS, draw_padding, pad_edges_batch, silence_bank
from fairseq_hkd.data.fbank import fbank


def test_bank_is_the_normalised_fbank_of_silence_and_quiet_noise():
    shift = np.arange(80, dtype=np.float32)
    bank = silence_bank(lambda f: f - shift)  # a frame-wise normalisation the bank must go through
    assert bank.shape == (len(NOISE_LEVELS_DBFS), 198, 80) and bank.dtype == np.float32
    np.testing.assert_allclose(bank[0], fbank(np.zeros(32000, np.float32)) - shift, atol=1e-5)
    energy = (bank + shift).mean(axis=(1, 2))  # log-mel energy rises with the noise level
    assert all(energy[i] < energy[i + 1] for i in range(len(energy) - 1))


def test_padding_keeps_each_utterance_between_bank_frames():
    rng = np.random.default_rng(0)
    B, F = 5, 80
    src, lengths = random_padded_batch([40, 31, 17, 40, 8], F, rng)
    bank = rng.uniform(-3, -2, (4, 198, F)).astype(np.float32)
    cfg = EdgeSilenceConfig(max_start=20, max_end=50, prob=0.7)
    seeds = [(7, 3, i, 1) for i in range(B)]
    out, new_lengths = pad_edges_batch(src, lengths, bank, cfg, seeds)
    assert out.shape == (B, int(new_lengths.max()), F)
    padded = 0
    for b in range(B):
        n = int(lengths[b])
        a, e, level = draw_padding(cfg, 4, np.random.default_rng(list(seeds[b])))  # independent redraw
        assert 0 <= a <= 20 and 0 <= e <= 50
        assert int(new_lengths[b]) == n + a + e
        np.testing.assert_array_equal(out[b, :a].numpy(), bank[level, :a])
        np.testing.assert_array_equal(out[b, a: a + n].numpy(), src[b, :n].numpy())
        np.testing.assert_array_equal(out[b, a + n: a + n + e].numpy(), bank[level, 198 - e:])
        assert (out[b, n + a + e:] == 0).all()  # batch padding stays zero
        padded += a + e > 0
    assert padded >= 2
    # probability 0: the batch comes back unchanged
    same, same_lengths = pad_edges_batch(src, lengths, bank, EdgeSilenceConfig(20, 50, prob=0.0), seeds)
    assert torch.equal(same, src) and torch.equal(same_lengths, lengths)
    # the draws reach their bounds over many seeds, with probability about prob
    draws = [draw_padding(cfg, 4, np.random.default_rng(s)) for s in range(2000)]
    assert max(d[0] for d in draws) == 20 and max(d[1] for d in draws) == 50
    assert {d[2] for d in draws} == {0, 1, 2, 3}
    assert 0.64 < np.mean([d != (0, 0, 0) for d in draws]) < 0.76


def test_task_pads_training_updates_only_and_refuses_utterance_cmvn(tiny_corpus):
    with pytest.raises(ValueError, match="--cmvn global"):
        setup_task(tiny_corpus, "--edge-silence-max-start-ms", "200")
    with pytest.raises(ValueError, match="at most 1980 ms"):
        setup_task(tiny_corpus, "--cmvn", "none", "--edge-silence-max-end-ms", "3000")
    task = setup_task(tiny_corpus, "--cmvn", "none", "--spec-aug-prob", "0",
                      "--edge-silence-max-start-ms", "200", "--edge-silence-max-end-ms", "500",
                      "--edge-silence-prob", "1")
    assert task.edge_silence == EdgeSilenceConfig(20, 50, 1.0)
    task.load_dataset("train")
    ds = task.dataset("train")
    s = ds.collater([ds[i] for i in range(4)])
    aug = task.augment(s, 3)
    src, lengths = s["net_input"]["src_tokens"], s["net_input"]["src_lengths"]
    bank = silence_bank(lambda f: f)  # --cmvn none
    for b in range(4):
        a, e, level = draw_padding(task.edge_silence, 4, np.random.default_rng([1, 3, int(s["id"][b]), 1]))
        n = int(lengths[b])
        assert int(aug["net_input"]["src_lengths"][b]) == n + a + e
        np.testing.assert_allclose(aug["net_input"]["src_tokens"][b, :a].numpy(), bank[level, :a], atol=1e-5)
        assert torch.equal(aug["net_input"]["src_tokens"][b, a: a + n], src[b, :n])
    assert torch.equal(s["net_input"]["src_tokens"], src)  # the caller's sample is left alone


def test_max_tokens_counts_the_edge_silence_a_batch_can_get(tiny_corpus):
    """--max-tokens bounds the padded frames B x T' of the batch the model gets, after the edge
    silence: batching counts the most any utterance can get (max start + max end frames)."""
    task = setup_task(tiny_corpus, "--cmvn", "none", "--spec-aug-prob", "0",
                      "--edge-silence-max-start-ms", "200", "--edge-silence-max-end-ms", "500",
                      "--edge-silence-prob", "1")
    task.load_dataset("train")
    task.load_dataset("valid")
    ds, valid = task.dataset("train"), task.dataset("valid")
    assert ds.batch_extra_frames == 70 and valid.batch_extra_frames == 0  # decoding splits are not padded
    i = int(np.argmax(ds.src_sizes))
    assert ds.num_tokens(i) == int(ds.src_sizes[i]) + 70
    max_tokens = 2 * (int(ds.src_sizes.max()) + 70) + 10  # room for 2 utterances of the longest
    over_without = 0
    for update in range(20):
        for extra in (70, 0):
            ds.batch_extra_frames = extra
            for batch in ds.batch_by_size(ds.ordered_indices(), max_tokens=max_tokens):
                s = ds.collater([ds[int(j)] for j in batch])
                aug = task.augment(s, update)["net_input"]["src_tokens"]
                if extra:
                    assert aug.shape[0] * aug.shape[1] <= max_tokens, (update, batch)
                else:
                    over_without += aug.shape[0] * aug.shape[1] > max_tokens
    assert over_without > 0  # counting the raw frames alone lets batches grow past --max-tokens
