"""Noise augmentation on log-mel frames (data/noise.py) against the fbank of the noisy waveform, the
SNR measured on the result's own pause frames, and the batch and task plumbing."""
import numpy as np
import pytest
import torch

from corpus import random_padded_batch, setup_task
from fairseq_hkd.data.audio import SAMPLE_RATE
from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.data.noise import (COLOURS, NoiseConfig, add_noise, add_noise_batch, bank_power, draw_noise,
                                    noise_bank, noise_recordings, noise_waveform, speech_power)


def _voiced(seconds=2.0, pause=(0.8, 1.2)) -> np.ndarray:
    """A speech-like float64 waveform: harmonics of a gliding 120-180 Hz pitch under a syllable-rate
    envelope, digital silence in ``pause`` (seconds)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 60 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    x[(t >= pause[0]) & (t < pause[1])] = 0.0
    return 0.1 * x / np.abs(x).max()


@pytest.mark.parametrize("colour", range(len(COLOURS)))
def test_addition_in_mel_energies_matches_the_fbank_of_the_noisy_waveform(colour):
    """log(exp(F) + exp(N)) against fbank(x + n): the cross term averages out over each mel band."""
    x = _voiced()
    n = 0.01 * noise_waveform(COLOURS[colour], len(x), np.random.default_rng(1))
    F, N = torch.from_numpy(fbank(x.astype(np.float32))), torch.from_numpy(fbank(n.astype(np.float32)))
    truth = torch.from_numpy(fbank((x + n).astype(np.float32))).double()
    approx = torch.logaddexp(F.double(), N.double())
    err = (approx - truth).abs().mean().item()
    effect = (F.double() - truth).abs().mean().item()
    assert effect > 1.0, effect  # the noise changes the features a lot ...
    assert err < 0.15 * effect and err < 0.3, (err, effect)  # ... and the addition gets it


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_snr_is_measured_on_the_result(snr):
    """Speech power over the noise power found in the result's pause frames (noise alone there)."""
    x = _voiced()
    F = torch.from_numpy(fbank(x.astype(np.float32)))
    bank = torch.from_numpy(noise_bank(seconds=4.0))
    noise_power = bank.double().exp().sum(dim=2).mean(dim=1)
    for c in range(len(COLOURS)):
        noisy = add_noise(F, bank[c, : F.shape[0]], snr, noise_power[c])
        pause = slice(int(0.85 * 100), int(1.15 * 100))  # frames entirely inside the silent stretch
        noise_there = noisy[pause].double().exp().sum(dim=1).mean()
        measured = 10 * np.log10(float(speech_power(F) / noise_there))
        assert abs(measured - snr) < 1.0, (c, measured)


def test_batch_draws_per_utterance_and_keeps_padding():
    rng = np.random.default_rng(0)
    src, lengths = random_padded_batch([50, 30, 41], 80, rng)
    mean, std = rng.normal(10, 2, 80).astype(np.float32), rng.uniform(1, 3, 80).astype(np.float32)
    bank = noise_bank(seconds=1.0)
    cfg = NoiseConfig(prob=1.0, snr_min=5, snr_max=15)
    seeds = [(1, 7, i, 4) for i in range(3)]
    out = add_noise_batch(src, lengths, bank, cfg, seeds, mean, std)
    # padding untouched, every utterance changed
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[b, n:], src[b, n:])
        assert not torch.allclose(out[b, :n], src[b, :n])
    # each row is add_noise of its own draw, on the raw frames (the order of the batch does not matter)
    perm = [2, 0, 1]
    out_perm = add_noise_batch(src[perm], lengths[perm], bank, cfg, [seeds[p] for p in perm], mean, std)
    for j, p in enumerate(perm):
        torch.testing.assert_close(out_perm[j], out[p])
    b, n = 1, int(lengths[1])
    colour, start, snr = draw_noise(cfg, [bank.shape[1]] * len(COLOURS), np.random.default_rng(list(seeds[b])))
    raw = src[b, :n].double() * torch.from_numpy(std).double() + torch.from_numpy(mean).double()
    noise = torch.from_numpy(bank[colour]).double()[(start + np.arange(n)) % bank.shape[1]]
    p_noise = torch.from_numpy(bank[colour]).double().exp().sum(dim=1).mean()
    gain = speech_power(raw) / (p_noise * 10 ** (snr / 10))
    expected = (np.logaddexp(raw.numpy(), (noise + gain.log()).numpy()) - mean) / std
    np.testing.assert_allclose(out[b, :n].numpy(), expected, rtol=1e-5, atol=1e-4)
    # probability 0 changes nothing
    assert torch.equal(add_noise_batch(src, lengths, bank, NoiseConfig(prob=0.0), seeds, mean, std), src)


def _noise_folder(root):
    """A --noise-dir: a 16 kHz hum + noise (1.5 s), an 8 kHz pink recording (2 s, resampled), one in a
    sub-folder (1 s, stereo), and files to skip: unreadable, silent, 50 ms, not audio."""
    import soundfile as sf

    rng = np.random.default_rng(5)
    (root / "sub").mkdir(parents=True)
    t = np.arange(int(1.5 * SAMPLE_RATE)) / SAMPLE_RATE
    hum = 0.05 * np.sin(2 * np.pi * 100 * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(root / "a_hum.wav", hum.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    sf.write(root / "b_pink8k.flac", (0.05 * noise_waveform(1.0, 16000, rng)).astype(np.float32), 8000)
    stereo = 0.03 * rng.standard_normal((SAMPLE_RATE, 2))
    sf.write(root / "sub" / "c_stereo.wav", stereo.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    (root / "d_broken.wav").write_bytes(b"RIFF not really")
    sf.write(root / "e_silent.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    sf.write(root / "f_short.wav", (0.1 * rng.standard_normal(800)).astype(np.float32), SAMPLE_RATE)
    (root / "README.txt").write_text("noise for the tests")
    return hum, stereo


def test_noise_recordings_bank_reads_resamples_and_skips_with_a_summary(tmp_path, caplog):
    from fairseq_hkd.data.audio import read_audio

    hum, stereo = _noise_folder(tmp_path / "noise")
    with caplog.at_level("INFO"):
        bank = noise_recordings(str(tmp_path / "noise"))
    # the three usable recordings, in path order, each the fbank of the file as the task reads audio
    assert [b.shape[0] for b in bank] == [148, 198, 98]
    np.testing.assert_allclose(bank[0], fbank(hum.astype(np.float32)), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(bank[1], fbank(read_audio(str(tmp_path / "noise" / "b_pink8k.flac"))))
    np.testing.assert_allclose(bank[2], fbank(stereo.astype(np.float32).mean(axis=1)), rtol=0, atol=1e-3)
    summary = [r.getMessage() for r in caplog.records if "recordings," in r.getMessage()]
    assert len(summary) == 1
    for part in ("3 recordings", "1 unreadable", "1 silent", "1 shorter than 0.1 s", "1 files that are not audio"):
        assert part in summary[0], summary[0]
    # power per recording, from its own frames
    torch.testing.assert_close(bank_power(bank)[1], torch.from_numpy(bank[1]).double().exp().sum(1).mean())
    # a cap on the length is used and said
    caplog.clear()
    with caplog.at_level("INFO"):
        capped = noise_recordings(str(tmp_path / "noise"), max_seconds=1.2)
    assert [b.shape[0] for b in capped] == [118, 118, 98]
    assert any("2 longer than 1.2 s, their first 1.2 s used" in r.getMessage() for r in caplog.records)


def test_noise_recordings_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"--noise-dir .*missing: no such folder"):
        noise_recordings(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"0 recordings.*1 files that are not audio ignored: no usable noise"):
        noise_recordings(str(tmp_path / "empty"))


def test_batch_with_recorded_noise_uses_each_recording_cyclically(tmp_path):
    """Entries of different lengths: row b is add_noise of its own draw from its own recording, the
    frames taken cyclically from the drawn start; the colours' bank draws the same (a [C, N, F] array
    and a list of C arrays are the same bank)."""
    _noise_folder(tmp_path / "noise")
    bank = noise_recordings(str(tmp_path / "noise"))
    rng = np.random.default_rng(3)
    src, lengths = random_padded_batch([250, 120, 60, 300], 80, rng)
    cfg = NoiseConfig(prob=1.0, snr_min=0, snr_max=10)
    seeds = [(2, 9, i, 4) for i in range(4)]
    out = add_noise_batch(src, lengths, bank, cfg, seeds)
    power = bank_power(bank)
    drawn = set()
    for b, n in enumerate(lengths.tolist()):
        k, start, snr = draw_noise(cfg, [x.shape[0] for x in bank], np.random.default_rng(list(seeds[b])))
        drawn.add(k)
        noise = torch.from_numpy(bank[k])[(start + np.arange(n)) % bank[k].shape[0]]
        torch.testing.assert_close(out[b, :n], add_noise(src[b, :n], noise, snr, power[k]))
    assert len(drawn) >= 2
    colours = noise_bank(seconds=1.0)
    torch.testing.assert_close(add_noise_batch(src, lengths, list(colours), cfg, seeds),
                               add_noise_batch(src, lengths, colours, cfg, seeds))


def test_task_reads_noise_dir_when_training_and_says_what_is_wrong(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="--noise-dir .* --noise-prob is 0"):
        setup_task(tiny_corpus, "--noise-dir", str(tmp_path))
    task = setup_task(tiny_corpus, "--noise-prob", "1", "--noise-dir", str(tmp_path / "missing"), "--cmvn", "none")
    task.load_dataset("valid")  # not a training split: the bank is not needed
    with pytest.raises(ValueError, match="no such folder"):
        task.load_dataset("train")  # before the first update
    _noise_folder(tmp_path / "noise")
    task = setup_task(tiny_corpus, "--spec-aug-prob", "0", "--noise-prob", "1", "--noise-dir",
                      str(tmp_path / "noise"), "--cmvn", "none")
    task.load_dataset("train")
    bank = task.noise_augmentation_bank()[0]
    assert len(bank) == 3
    ds = task.dataset("train")
    s = ds.collater([ds[i] for i in range(min(4, len(ds)))])
    a = task.augment(s, 3)
    src, lengths = s["net_input"]["src_tokens"], s["net_input"]["src_lengths"]
    want = add_noise_batch(src, lengths, bank, task.noise, [(task.cfg.seed, 3, int(i), 4) for i in s["id"]])
    torch.testing.assert_close(a["net_input"]["src_tokens"], want)


def test_task_option_errors_and_training_only(tiny_corpus):
    with pytest.raises(ValueError, match="--noise-prob"):
        setup_task(tiny_corpus, "--noise-prob", "1.5")
    with pytest.raises(ValueError, match="swap them"):
        setup_task(tiny_corpus, "--noise-prob", "0.5", "--noise-snr-min", "20", "--noise-snr-max", "5")
    with pytest.raises(ValueError, match="--noise-prob needs frame-wise normalisation"):
        setup_task(tiny_corpus, "--noise-prob", "0.5", "--cmvn", "utterance")
    assert setup_task(tiny_corpus).noise is None
    task = setup_task(tiny_corpus, "--spec-aug-prob", "0", "--noise-prob", "1", "--cmvn", "none")
    task.load_dataset("train")
    ds = task.dataset("train")
    s = ds.collater([ds[i] for i in range(min(4, len(ds)))])
    a, b = task.augment(s, 3), task.augment(s, 3)
    assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])  # seeded
    assert not torch.equal(a["net_input"]["src_tokens"], s["net_input"]["src_tokens"])
    assert not torch.equal(task.augment(s, 4)["net_input"]["src_tokens"], a["net_input"]["src_tokens"])
    assert torch.equal(a["net_input"]["src_lengths"], s["net_input"]["src_lengths"])
    assert torch.equal(a["target"], s["target"])


def _load_script():
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "noisy_manifest", os.path.join(os.path.dirname(__file__), "..", "scripts", "noisy_manifest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("noise", ["pink", "babble"])
def test_noisy_manifest_script_mixes_at_the_asked_snr(tmp_path, noise):
    """scripts/noisy_manifest.py: the written noise (noisy - clean) has the asked SNR against the speech
    samples, the manifest keeps its columns with absolute new paths, and a rerun writes the same files."""
    import soundfile as sf

    script = _load_script()
    (tmp_path / "wav").mkdir()
    rows = []
    for i in range(5):
        x = _voiced(seconds=1.0 + 0.2 * i, pause=(0.3, 0.5)) * 0.5
        sf.write(tmp_path / "wav" / f"u{i}.wav", x.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
        rows.append(f"u{i}\twav/u{i}.wav\t{len(x)}\tword {i}\tspk{i}")
    (tmp_path / "dev.tsv").write_text("id\taudio\tn_samples\ttgt_text\tspeaker\n" + "\n".join(rows) + "\n")
    for out in ("a", "b"):
        script.main(["--manifest", str(tmp_path / "dev.tsv"), "--noise", noise, "--snr", "10",
                     "--out", str(tmp_path / out)])
    lines = (tmp_path / "a" / "dev.tsv").read_text().splitlines()
    assert lines[0] == "id\taudio\tn_samples\ttgt_text\tspeaker" and len(lines) == 6
    for i, line in enumerate(lines[1:]):
        uid, path, n, text, spk = line.split("\t")
        assert (uid, n, text, spk) == (f"u{i}", rows[i].split("\t")[2], f"word {i}", f"spk{i}")
        assert path == str(tmp_path / "a" / f"u{i}.wav")
        x, _ = sf.read(tmp_path / "wav" / f"u{i}.wav", dtype="float64")
        y, _ = sf.read(path, dtype="float64")
        assert np.array_equal(y, sf.read(tmp_path / "b" / f"u{i}.wav", dtype="float64")[0])
        noise_power = np.mean((y - x) ** 2)  # peak 0.5 + noise at 10 dB stays below clipping: not rescaled
        measured = 10 * np.log10(script.speech_power(x) / noise_power)
        assert abs(measured - 10.0) < 0.2, measured  # 16-bit rounding and the peak-relative activity mask


def test_noisy_manifest_script_names_an_unreadable_row(tmp_path, capsys):
    script = _load_script()
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    (tmp_path / "dev.tsv").write_text("id\taudio\tn_samples\ttgt_text\nu0\tbad.wav\t10\tword\n")
    with pytest.raises(SystemExit, match=r"dev.tsv:2: cannot read .*bad.wav"):
        script.main(["--manifest", str(tmp_path / "dev.tsv"), "--noise", "white", "--snr", "10",
                     "--out", str(tmp_path / "out")])


def test_fairseq_train_shows_bad_input_as_one_line(tiny_corpus, tmp_path, venv_bin, repo_root):
    """A real fairseq-train: a missing --noise-dir and a broken manifest line each stop it before the first
    update with ``error: <message>`` (errors.py's hook), no traceback; FAIRSEQ_HKD_TRACEBACK=1 shows it."""
    import os
    import shutil
    import subprocess

    def train(data, *extra, **env):
        cmd = [str(venv_bin / "fairseq-train"), str(data), "--user-dir", "fairseq_hkd", "--task", "cif_asr",
               "--arch", "cif_tiny", "--criterion", "cif", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1",
               "--batch-size", "2", "--cpu", "--num-workers", "0", "--save-dir", str(tmp_path / "ckpt"),
               "--cmvn", "none", *extra]
        return subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1", **env))

    proc = train(tiny_corpus, "--noise-prob", "0.5", "--noise-dir", str(tmp_path / "no-noise-here"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-noise-here: no such folder" in errors[0]
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    lines = (data / "train.tsv").read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:2])  # a row without n_samples and text
    (data / "train.tsv").write_text("\n".join(lines) + "\n")
    proc = train(data)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.tsv:4" in errors[0], errors
    proc = train(data, FAIRSEQ_HKD_TRACEBACK="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "train.tsv:4" in proc.stderr
