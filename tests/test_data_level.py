"""Input level matching (fairseq_hkd/data/level.py): the premise checked against kaldi's fbank, the
rules on hand-computed cases, and the same matching in training, fairseq-generate, the PyTorch
transcriber and the ONNX runtime's front end."""
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf

from corpus import setup_task
from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.data.level import (CMVN_OFFSET, MAX_GAIN_DB, NATS_PER_DB, match_level, model_level, resolve_target,
                                    speech_level)
from fairseq_hkd.data.manifest import read_manifest


@pytest.fixture(scope="module")
def data(tiny_corpus, tmp_path_factory):
    """The tiny corpus with global CMVN statistics (cmvn.npz) of its training split."""
    from fairseq_hkd.data.cli_features import cmvn_cli_main

    d = tmp_path_factory.mktemp("level") / "data"
    shutil.copytree(tiny_corpus, d)
    cmvn_cli_main([str(d), "--split", "train"])
    return d


def speech_like(seconds=1.5, sr=16000, seed=0):
    """Harmonics of a gliding 120-220 Hz pitch with a syllable-rate envelope, then 0.3 s of quiet noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 100 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    x = np.concatenate([0.3 * x / np.abs(x).max(), 1e-3 * rng.standard_normal(int(0.3 * sr))])
    return x.astype(np.float32)


@pytest.mark.parametrize("gain", [0.03, 0.25, 2.5])
def test_a_gain_adds_one_constant_to_every_logmel_bin_and_matching_removes_it(gain):
    """The premise, against kaldi-native-fbank itself: g dB of gain adds g * ln(10) / 10 nats to each
    bin, and matched features of a scaled recording equal those of the original."""
    wav = speech_like()
    a, b = fbank(wav).astype(np.float64), fbank(wav * gain).astype(np.float64)
    # bins far above kaldi's energy floor (log FLT_EPSILON = -15.9) and within 8 nats of their frame's
    # strongest (weaker ones hold float32 rounding of the FFT)
    loud = (a > -5.0) & (a > a.max(axis=1, keepdims=True) - 8.0)
    gain_db = 20 * np.log10(gain)
    np.testing.assert_allclose((b - a)[loud], gain_db * NATS_PER_DB, atol=2e-3)
    assert speech_level(b.astype(np.float32)) - speech_level(a.astype(np.float32)) == pytest.approx(
        gain_db * NATS_PER_DB, abs=0.01)  # frame means include the weak bins
    target = 15.0
    ma, ga = match_level(a.astype(np.float32), target)
    mb, gb = match_level(b.astype(np.float32), target)
    assert speech_level(ma) == pytest.approx(target, abs=1e-4)
    assert gb - ga == pytest.approx(-gain_db, abs=0.05)
    np.testing.assert_allclose(mb[loud], ma[loud], atol=0.01)


def test_level_rules_on_hand_computed_cases():
    feats = np.repeat(np.arange(10, dtype=np.float32)[:, None], 4, axis=1)  # frame means 0..9
    assert speech_level(feats) == pytest.approx(8.1)  # numpy's linear interpolation: 0.9 * 9
    out, g = match_level(feats, 10.0)
    assert g == pytest.approx(1.9 / NATS_PER_DB) and out[0, 0] == pytest.approx(1.9, abs=1e-6)
    one_nat_db = 1.0 / NATS_PER_DB
    out, g = match_level(feats, 10.0, tolerance_db=one_nat_db)  # band [9, 11]: moved to 9
    assert out[9, 0] == pytest.approx(9.9, abs=1e-5) and g == pytest.approx(0.9 / NATS_PER_DB)
    out, g = match_level(feats, 7.5, tolerance_db=one_nat_db)  # 8.1 is inside [6.5, 8.5]: untouched
    assert out is feats and g == 0.0
    out, g = match_level(feats, 8.1 + 100.0)  # never more than MAX_GAIN_DB
    assert g == MAX_GAIN_DB and out[0, 0] == pytest.approx(MAX_GAIN_DB * NATS_PER_DB, abs=1e-5)
    assert match_level(feats, None) == (feats, 0.0)
    with pytest.raises(ValueError, match=r"\[T > 0, F\]"):
        speech_level(np.zeros((0, 4), np.float32))


def test_targets_of_the_settings():
    mean = [10.0, 12.0]
    assert resolve_target("off", "global", mean) is None
    assert resolve_target("auto", "global", mean) == pytest.approx(11.0 + CMVN_OFFSET)
    assert resolve_target("auto", "utterance") is None and resolve_target("auto", "none") is None
    assert resolve_target("16.5", "utterance") == 16.5 and resolve_target(16.5, "global", mean) == 16.5
    with pytest.raises(ValueError, match="auto \\| off \\| a level in nats"):
        resolve_target("loud", "global", mean)
    # auto = what the model trained at: its --input-level when it had one
    assert model_level("auto", "14", "global", mean) == (14.0, 0.0)
    assert model_level("auto", "off", "global", mean) == (pytest.approx(17.0), 0.0)
    assert model_level("off", "14", "global", mean, 3.0) == (None, 3.0)
    with pytest.raises(ValueError, match=">= 0 dB"):
        model_level("auto", "off", "global", mean, -1.0)


def test_task_matches_levels_before_cmvn_in_every_split(data):
    """--input-level auto: the dataset's source is CMVN(match_level(fbank)) at the CMVN-implied level,
    so a recording 26 dB quieter gives the same input; off leaves the features as they were."""
    from fairseq_hkd.data.cmvn import GlobalCmvn

    task = setup_task(data, "--cmvn", "global", "--input-level", "auto", "--feature-store", "no")
    plain = setup_task(data, "--cmvn", "global", "--feature-store", "no")
    for t in (task, plain):
        t.load_dataset("valid")
    cmvn = GlobalCmvn(str(data / "cmvn.npz"))
    target = float(np.mean(cmvn.mean.astype(np.float64))) + CMVN_OFFSET
    entries = read_manifest(data / "valid.tsv")
    for i, e in enumerate(entries):
        wav, _ = sf.read(e.audio, dtype="float32")
        want = cmvn(match_level(fbank(wav), target)[0])
        np.testing.assert_allclose(task.dataset("valid")[i]["source"], want, atol=1e-5)
        raw = fbank(wav)
        loud = raw.mean(axis=1) > speech_level(raw) - 5.0  # frames well above kaldi's energy floor when scaled
        quiet = cmvn(match_level(fbank(wav * 0.05), target)[0])
        np.testing.assert_allclose(quiet[loud], want[loud], atol=0.05)
        np.testing.assert_allclose(plain.dataset("valid")[i]["source"], cmvn(fbank(wav)), atol=1e-5)
    normalise = pickle.loads(pickle.dumps(task.dataset("valid").cmvn))  # data-loader workers can take it
    np.testing.assert_array_equal(normalise(raw), want)
    with pytest.raises(ValueError, match="input level 'loud'"):
        setup_task(data, "--cmvn", "global", "--input-level", "loud")


def test_onnx_front_end_matches_like_the_task(data):
    """The torch-free runtime's Frontend: auto from the exported CMVN mean; the training setting wins."""
    from fairseq_hkd.data.cmvn import GlobalCmvn
    from fairseq_hkd.runtime.frontend import Frontend
    from fairseq_hkd.data.fbank import fbank_options

    cmvn = GlobalCmvn(str(data / "cmvn.npz"))
    cfg = {"sample_rate": 16000, "wave_scale": 32768.0, "fbank": fbank_options().as_dict(), "min_source_frames": 8,
           "cmvn": {"type": "global", "mean": [float(x) for x in cmvn.mean], "std": [float(x) for x in cmvn.std]}}
    wav = speech_like()
    target = float(np.mean(cmvn.mean.astype(np.float64))) + CMVN_OFFSET
    fe = Frontend(cfg)  # an export from before input_level was recorded: auto from its CMVN mean
    assert fe.level_target == pytest.approx(target, abs=1e-4)
    np.testing.assert_allclose(fe.features(wav), cmvn(match_level(fbank(wav), target)[0]), atol=1e-4)
    raw = fbank(wav)
    loud = (raw > -5.0) & (raw > raw.max(axis=1, keepdims=True) - 8.0)  # as in the first test
    np.testing.assert_allclose(fe.features(wav * 0.1)[loud], fe.features(wav)[loud], atol=0.02)
    assert Frontend(dict(cfg, input_level="13.5")).level_target == 13.5
    off = Frontend(cfg, input_level="off")
    np.testing.assert_allclose(off.features(wav), cmvn(fbank(wav)), atol=1e-5)


@pytest.mark.slow
def test_trained_with_matching_generate_and_transcriber_agree_at_any_level(data, tmp_path):
    """A model trained with --input-level auto: fairseq-generate (the dataset matches levels) and the
    transcriber (auto = the level recorded in the checkpoint) give the same hypotheses, and the
    transcriber gives them again for the recordings 26 dB quieter; --input-level off does not."""
    from fairseq_hkd.generation.inputs import AudioItem
    from fairseq_hkd.generation.transcribe import Recognizer
    from test_scoring import generate, quick_checkpoint

    run = quick_checkpoint(tmp_path, data, "--cmvn", "global", "--input-level", "auto")
    _, parsed = generate(run, tmp_path / "gen")
    entries = read_manifest(data / "valid.tsv")
    quiet = []
    for e in entries:
        wav, sr = sf.read(e.audio, dtype="float32")
        sf.write(tmp_path / f"{e.id}.wav", wav * 0.05, sr, subtype="FLOAT")
        quiet.append(AudioItem(e.id, str(tmp_path / f"{e.id}.wav")))
    rec = Recognizer.from_checkpoint(str(run.ckpt), beam=4, cpu=True)
    assert rec.level_target == pytest.approx(
        float(np.mean(np.load(data / "cmvn.npz")["mean"])) + CMVN_OFFSET, abs=1e-6)
    loud = rec.transcribe([AudioItem(e.id, e.audio) for e in entries], batch_size=1)
    assert [r.text for r in loud] == [parsed[i]["D"] for i in range(len(entries))]
    assert [r.text for r in rec.transcribe(quiet, batch_size=1)] == [r.text for r in loud]
    off = Recognizer.from_checkpoint(str(run.ckpt), beam=4, cpu=True, input_level="off")
    wav, _ = sf.read(entries[0].audio, dtype="float32")
    assert off.level_target is None
    np.testing.assert_array_equal(off.features(wav * 0.05), off.cmvn(fbank(wav * 0.05)).astype(np.float32))
