"""Every bad-input case stops with a message naming the manifest line (or is counted and logged)."""
import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

from corpus import setup_task
from fairseq_hkd.data import audio as audio_mod
from fairseq_hkd.data.audio import AudioError, read_audio
from fairseq_hkd.data.manifest import ManifestError, read_manifest


@pytest.fixture
def data(tiny_corpus, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_corpus, dst)
    return dst


def edit_line(path, lineno, column, value):
    """Set ``column`` of line ``lineno`` (1-based, header = 1) of a manifest."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    fields = lines[lineno - 1].split("\t")
    fields[header.index(column)] = value
    lines[lineno - 1] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return fields[header.index("id")]


def load(data, split="train", *args):
    task = setup_task(data, *args)
    task.load_dataset(split)
    return task.dataset(split)


def test_missing_audio_names_line(data):
    edit_line(data / "train.tsv", 3, "audio", "wav/nope.wav")
    with pytest.raises(ManifestError, match=r"train\.tsv:3: audio file .*nope\.wav .* does not exist"):
        load(data)


@pytest.mark.parametrize("kind, says", [
    ("missing", r"no such file$"),
    ("folder", r"it is a folder, not a file$"),
    ("empty", r"the file is empty \(0 bytes\); re-create or remove it$"),
    ("text", r"Format not recognised \(libsndfile reads WAV, FLAC, .*ffmpeg -i IN -ac 1 -ar 16000 OUT\.wav\)$"),
])
def test_unreadable_file_says_what_is_wrong_and_the_fix(tmp_path, kind, says):
    """read_audio, the header read and the block reader of long files give the same one-line reason."""
    from fairseq_hkd.data.audio import file_sample_rate
    from fairseq_hkd.generation.audio_stream import AudioStream

    path = tmp_path / "x.wav"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, not audio")
    for read in (lambda: read_audio(str(path), where="m.tsv:3"), lambda: file_sample_rate(str(path), where="m.tsv:3")):
        with pytest.raises(AudioError, match=rf"^m\.tsv:3: cannot read audio .*x\.wav: " + says) as err:
            read()
        assert "\n" not in str(err.value) and str(err.value).count("x.wav") == 1
    with pytest.raises(AudioError, match=r"^cannot read audio .*x\.wav: " + says):
        AudioStream(str(path))


def test_unreadable_audio_names_line(data):
    (data / "wav" / "train0004.wav").write_bytes(b"not a wav file at all" * 10)
    with pytest.raises(AudioError, match=r"train\.tsv:6: cannot read audio .*train0004\.wav"):
        load(data)  # the header (sample rate, for the frame count) is read when the split loads


def test_zero_length_in_manifest_names_line(data):
    edit_line(data / "train.tsv", 4, "n_samples", "0")
    with pytest.raises(ManifestError, match=r"train\.tsv:4: utterance 'train0002' has zero-length audio"):
        load(data)


def test_zero_length_audio_file_names_line(data):
    sf.write(data / "wav" / "train0001.wav", np.zeros(0, dtype=np.float32), 16000)
    ds = load(data)
    with pytest.raises(AudioError, match=r"train\.tsv:3: audio .*train0001\.wav is empty"):
        ds[1]


def test_sample_count_mismatch_names_line(data):
    edit_line(data / "valid.tsv", 2, "n_samples", "12345")
    ds = load(data, "valid")
    with pytest.raises(AudioError, match=r"valid\.tsv:2: .* has \d+ samples but the manifest says 12345"):
        ds[0]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_transcript_names_line(data, text):
    edit_line(data / "train.tsv", 5, "tgt_text", text)
    with pytest.raises(ManifestError, match=r"train\.tsv:5: utterance 'train0003' has an empty transcript"):
        load(data)


def test_bad_field_count_and_header(data):
    with open(data / "train.tsv", "a", encoding="utf-8") as f:
        f.write("extra\twav/train0000.wav\t100\n")
    with pytest.raises(ManifestError, match=r"train\.tsv:10: 3 tab-separated fields, header has 5"):
        read_manifest(data / "train.tsv")
    (data / "valid.tsv").write_text("id\taudio\ttext\nx\ty\tz\n")
    with pytest.raises(ManifestError, match=r"valid\.tsv:1: header .* lacks column\(s\) \['n_samples', 'tgt_text'\]"):
        read_manifest(data / "valid.tsv")


def test_duplicate_id_names_both_lines(data):
    edit_line(data / "train.tsv", 4, "id", "train0000")
    with pytest.raises(ManifestError, match=r"train\.tsv:4: duplicate id 'train0000' \(first at line 2\)"):
        read_manifest(data / "train.tsv")


def drop_symbol_from_dict(data, symbol):
    lines = [ln for ln in (data / "dict.txt").read_text().splitlines() if ln.split()[0] != symbol]
    (data / "dict.txt").write_text("\n".join(lines) + "\n")


def test_unknown_symbols_above_ratio_fail_naming_lines(data):
    rows = read_manifest(data / "train.tsv")
    bad = [r.where.rsplit(":", 1)[1] for r in rows if "x" in r.tgt_text]
    assert bad, "corpus should contain an 'x'"
    drop_symbol_from_dict(data, "x")
    with pytest.raises(ManifestError, match=rf"are not in the dictionary .*train\.tsv:{bad[0]}: \['x'\].*--max-unk-ratio 0\.0"):
        load(data)


def test_unknown_symbols_below_ratio_are_counted(data, caplog):
    drop_symbol_from_dict(data, "x")
    n_x = sum(r.tgt_text.count("x") for r in read_manifest(data / "train.tsv"))
    with caplog.at_level(logging.WARNING):
        ds = load(data, "train", "--max-unk-ratio", "0.5")
    assert any(f"{n_x} of " in r.message and "mapped to <unk>" in r.message for r in caplog.records)
    unk = ds.tgt_dict.unk()
    assert sum(int((t == unk).sum()) for t in ds.targets) == n_x


def write_wav(path, wav, sr):
    sf.write(path, wav, sr, subtype="PCM_16")
    return sf.info(str(path)).frames


def test_other_sample_rate_resampled_and_counted(tmp_path):
    sr = 8000
    t = np.arange(sr) / sr
    wav = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    n = write_wav(tmp_path / "a.wav", wav, sr)
    before = audio_mod.COUNTERS.counts["resampled to 16000 Hz"]
    out = read_audio(str(tmp_path / "a.wav"), "m.tsv:2", n)
    assert out.shape == (16000,)
    assert audio_mod.COUNTERS.counts["resampled to 16000 Hz"] == before + 1
    # the 440 Hz tone survives resampling: compare with a 16 kHz rendering away from the edges
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    np.testing.assert_allclose(out[1000:-1000], ref[1000:-1000], atol=2e-3)
    with pytest.raises(AudioError, match=r"m\.tsv:2: audio .* is sampled at 8000 Hz, 16000 Hz expected \(--strict-sample-rate"):
        read_audio(str(tmp_path / "a.wav"), "m.tsv:2", n, strict_sample_rate=True)


def test_stereo_downmixed_and_counted_or_rejected(tmp_path):
    rng = np.random.default_rng(0)
    st = (0.3 * rng.standard_normal((4000, 2))).astype(np.float32)
    n = write_wav(tmp_path / "s.wav", st, 16000)
    before = audio_mod.COUNTERS.counts["down-mixed to mono"]
    out = read_audio(str(tmp_path / "s.wav"), "m.tsv:7", n)
    q = sf.read(tmp_path / "s.wav", dtype="float32")[0]  # the PCM_16-quantised samples
    np.testing.assert_allclose(out, q.mean(axis=1), atol=1e-7)
    assert audio_mod.COUNTERS.counts["down-mixed to mono"] == before + 1
    with pytest.raises(AudioError, match=r"m\.tsv:7: audio .* has 2 channels"):
        read_audio(str(tmp_path / "s.wav"), "m.tsv:7", n, multichannel="error")


def test_task_strict_sample_rate_option(data):
    """--strict-sample-rate reaches the dataset: an 8 kHz file in the manifest is rejected when the split
    loads (its frame count needs the rate), before any batch is drawn."""
    wav = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    n = write_wav(data / "wav" / "valid0000.wav", wav, 8000)
    edit_line(data / "valid.tsv", 2, "n_samples", str(n))
    assert load(data, "valid")[0]["source"].shape[0] == 1 + (16000 - 400) // 160
    with pytest.raises(AudioError, match=r"valid\.tsv:2: .*8000 Hz"):
        load(data, "valid", "--strict-sample-rate")[0]
