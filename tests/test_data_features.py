"""fbank against an independent float64 re-implementation of Kaldi's recipe and a pure tone; CMVN
statistics; the feature store and its console scripts."""
import shutil

import numpy as np
import pytest
import soundfile as sf

from fairseq_hkd.data.audio import AudioError, read_audio
from fairseq_hkd.data.cli_features import cmvn_cli_main, store_cli_main
from fairseq_hkd.data.cmvn import CmvnAccumulator, GlobalCmvn, utterance_cmvn
from fairseq_hkd.data.fbank import fbank, num_frames
from fairseq_hkd.data.feature_store import FeatureStore
from fairseq_hkd.data.manifest import ManifestError, read_manifest

SR = 16000


def mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_fbank_reference(wav, num_bins=80, low=20.0, high=SR / 2):
    """Kaldi fbank written out in float64: int16 scale, DC removal, pre-emphasis 0.97, povey window,
    512-point power spectrum, triangular filters equally spaced on mel = 1127 ln(1 + f/700), log."""
    x = np.asarray(wav, np.float64) * 32768.0
    N, hop, nfft = 400, 160, 512
    T = 1 + (len(x) - N) // hop if len(x) >= N else 0
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N) / (N - 1))) ** 0.85
    ml, mh = mel(low), mel(high)
    d = (mh - ml) / (num_bins + 1)
    m = mel(np.arange(nfft // 2) * SR / nfft)
    W = np.zeros((num_bins, nfft // 2))
    for b in range(num_bins):
        lo, c, hi = ml + b * d, ml + (b + 1) * d, ml + (b + 2) * d
        up, dn = (m > lo) & (m <= c), (m > c) & (m < hi)
        W[b, up] = (m[up] - lo) / (c - lo)
        W[b, dn] = (hi - m[dn]) / (hi - c)
    out = np.zeros((T, num_bins))
    for t in range(T):
        f = x[t * hop: t * hop + N].copy()
        f -= f.mean()
        f[1:] -= 0.97 * f[:-1].copy()
        f[0] -= 0.97 * f[0]
        p = np.abs(np.fft.rfft(f * win, nfft)) ** 2
        out[t] = np.log(np.maximum(W @ p[: nfft // 2], np.finfo(np.float32).eps))
    return out


def tone(freq, seconds=0.5, amp=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_pure_tone_lands_in_expected_mel_bin(freq):
    feats = fbank(tone(freq))
    d = (mel(SR / 2) - mel(20.0)) / 81
    centers = mel(20.0) + d * np.arange(1, 81)
    expected = int(np.argmin(np.abs(centers - mel(freq))))
    assert feats.shape[1] == 80
    assert int(feats.mean(0).argmax()) == expected


def test_fbank_matches_float64_kaldi_reference(tiny_corpus):
    wav, sr = sf.read(tiny_corpus / "wav" / "train0000.wav", dtype="float32")
    ours, ref = fbank(wav), kaldi_fbank_reference(wav)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-3)


@pytest.mark.parametrize("n", [0, 399, 400, 559, 560, 16000, 23185])
def test_num_frames_matches_fbank(n):
    wav = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    assert fbank(wav).shape[0] == num_frames(n) == (0 if n < 400 else 1 + (n - 400) // 160)


def test_utterance_cmvn_zero_mean_unit_variance():
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(200, 80)).astype(np.float32)
    y = utterance_cmvn(x).astype(np.float64)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)


def test_cmvn_accumulator_matches_numpy():
    rng = np.random.default_rng(1)
    parts = [rng.normal(2.0, 4.0, size=(n, 80)) for n in (30, 50, 7)]
    acc = CmvnAccumulator()
    for p in parts:
        acc.add(p.astype(np.float32))
    allx = np.concatenate(parts).astype(np.float32).astype(np.float64)
    s = acc.stats()
    np.testing.assert_allclose(s["mean"], allx.mean(0), rtol=1e-10)
    np.testing.assert_allclose(s["std"], allx.std(0), rtol=1e-8)
    assert s["count"] == 87


@pytest.fixture
def corpus_copy(tiny_corpus, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_corpus, dst)
    return dst


def test_global_cmvn_cli_normalises_training_features(corpus_copy, capsys):
    cmvn_cli_main([str(corpus_copy), "--split", "train"])
    assert "cmvn: 8 utterances" in capsys.readouterr().out
    norm = GlobalCmvn(str(corpus_copy / "cmvn.npz"))
    feats = np.concatenate([
        norm(fbank(read_audio(e.audio))) for e in read_manifest(corpus_copy / "train.tsv")
    ]).astype(np.float64)
    np.testing.assert_allclose(feats.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(feats.std(0), 1.0, atol=1e-3)


def test_global_cmvn_missing_stats_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="fairseq-hkd-cmvn"):
        GlobalCmvn(str(tmp_path / "cmvn.npz"))


@pytest.mark.parametrize("dtype,atol", [("float32", 0.0), ("float16", 0.02)])
def test_feature_store_round_trip(corpus_copy, capsys, dtype, atol):
    store_cli_main([str(corpus_copy), "--splits", "valid", "--dtype", dtype])
    out = capsys.readouterr().out
    assert "valid: 4 utterances" in out and "none resampled or down-mixed" in out
    manifest = corpus_copy / "valid.tsv"
    store = FeatureStore(str(corpus_copy), "valid", str(manifest))
    for e in read_manifest(manifest):
        direct = fbank(read_audio(e.audio))
        stored = store.get(e.id)
        assert stored.shape == direct.shape and store.frames(e.id) == len(direct)
        np.testing.assert_allclose(stored, direct, atol=atol, rtol=1e-3 if atol else 0)


def test_feature_store_rejects_other_manifest(corpus_copy):
    store_cli_main([str(corpus_copy), "--splits", "valid"])
    FeatureStore(str(corpus_copy), "valid", str(corpus_copy / "valid.tsv"))  # same manifest: accepted
    lines = (corpus_copy / "valid.tsv").read_text().splitlines()
    (corpus_copy / "valid.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="rebuild it: fairseq-hkd-feature-store"):
        FeatureStore(str(corpus_copy), "valid", str(corpus_copy / "valid.tsv"))


@pytest.mark.parametrize("workers", [1, 2])
def test_feature_store_counts_resampled_files(corpus_copy, capsys, workers):
    from fairseq_hkd.data.audio import resample

    wav, _ = sf.read(corpus_copy / "wav" / "valid0001.wav", dtype="float32")
    sf.write(corpus_copy / "wav" / "valid0001.wav", resample(wav, SR, 8000), 8000, subtype="PCM_16")
    lines = (corpus_copy / "valid.tsv").read_text().splitlines()
    fields = lines[2].split("\t")
    fields[2] = str(sf.info(str(corpus_copy / "wav" / "valid0001.wav")).frames)
    lines[2] = "\t".join(fields)
    (corpus_copy / "valid.tsv").write_text("\n".join(lines) + "\n")
    store_cli_main([str(corpus_copy), "--splits", "valid", "--dtype", "float32", "--workers", str(workers)])
    assert "resampled to 16000 Hz: 1" in capsys.readouterr().out
    e = read_manifest(corpus_copy / "valid.tsv")[1]
    store = FeatureStore(str(corpus_copy), "valid")
    np.testing.assert_array_equal(store.get(e.id), fbank(read_audio(e.audio, expected_samples=e.n_samples)))


# ---------------------------------------------------------------------------------------------- frame counts
def _rate_corpus(tmp_path, with_sample_rate):
    """An 8 kHz, a 44.1 kHz and a 16 kHz file; n_samples counted at each file's own rate."""
    from fairseq_hkd.data.manifest import write_manifest

    rng = np.random.default_rng(0)
    rows = []
    for i, (rate, n) in enumerate([(8000, 9876), (44100, 33734), (16000, 8037)]):
        path = tmp_path / f"r{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), rate, subtype="PCM_16")
        assert sf.info(str(path)).frames == n
        rows.append({"id": f"r{i}", "audio": path.name, "n_samples": n, "tgt_text": "a", "sample_rate": rate})
    write_manifest(tmp_path / "m.tsv", rows, with_sample_rate=with_sample_rate)
    return read_manifest(tmp_path / "m.tsv")


def _dataset(entries, **kw):
    import torch
    from fairseq.data import Dictionary

    from fairseq_hkd.data.dataset import AudioFeatures, CifAsrDataset

    return CifAsrDataset("m", entries, [torch.LongTensor([4, 2]) for _ in entries], Dictionary(), AudioFeatures(**kw),
                         lambda x: x, shuffle=False)


@pytest.mark.parametrize("with_sample_rate", [False, True], ids=["rate from the header", "rate column"])
def test_dataset_sizes_of_audio_not_at_16k_are_the_frames_produced(tmp_path, with_sample_rate):
    """Batching and the length filters use src_sizes: they must be the frames of the audio once resampled
    to 16 kHz. By hand: 8 kHz, 9876 samples -> 19752 at 16 kHz -> 1 + (19752 - 400) // 160 = 121 frames;
    44.1 kHz, 33734 -> ceil(33734 * 160 / 441) = 12240 -> 1 + 11840 // 160 = 75 (rounding down would give
    12239 samples and 74 frames); 16 kHz, 8037 -> 1 + 7637 // 160 = 48. Counted at the file's own rate
    they would be 60, 209 and 48."""
    entries = _rate_corpus(tmp_path, with_sample_rate)
    assert [e.sample_rate for e in entries] == ([8000, 44100, 16000] if with_sample_rate else [None] * 3)
    ds = _dataset(entries)
    assert ds.src_sizes.tolist() == [121, 75, 48]
    for i in range(3):
        assert ds[i]["source"].shape == (ds.size(i)[0], 80) and ds.num_tokens(i) == ds.src_sizes[i]
    with pytest.raises(AudioError, match=r"m\.tsv:2: audio .*r0\.wav is sampled at 8000 Hz, 16000 Hz expected "
                                         r"\(--strict-sample-rate"):
        _dataset(entries, strict_sample_rate=True)  # at load, before any batch is drawn


def test_manifest_sample_rate_column_checked(tmp_path):
    _rate_corpus(tmp_path, True)
    lines = (tmp_path / "m.tsv").read_text().splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\t16000"  # r0 is an 8 kHz file
    bad = lines[:3] + [lines[3].rsplit("\t", 1)[0] + "\t0"]
    (tmp_path / "m.tsv").write_text("\n".join(bad) + "\n")
    with pytest.raises(ManifestError, match=r"m\.tsv:4: sample_rate '0' of 'r2' is not a positive integer"):
        read_manifest(tmp_path / "m.tsv")
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n")
    ds = _dataset(read_manifest(tmp_path / "m.tsv"))
    assert ds.src_sizes.tolist() == [60, 75, 48]  # what the column claims: 9876 samples at 16 kHz
    with pytest.raises(AudioError, match=r"m\.tsv:2: audio .*r0\.wav is sampled at 8000 Hz but the manifest's "
                                         r"sample_rate says 16000; regenerate the manifest"):
        ds[0]
