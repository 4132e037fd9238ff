"""Robustness battery: every bad input we know of, across the prepare scripts, the task's data
pipeline, the teacher store, the loss and the command lines, gives either a clear error (naming the
file and line or the utterance, and the fix) or a counted, logged skip. Never a silent drop, never an
unrelated exception.

Cases (where the check lives):

- prepare (AISHELL-1 tree, counted skips): corrupt audio, empty audio, wrong sample rate, stereo,
  transcript line without text, duplicate transcript line, audio without transcript; LibriSpeech
  .trans.txt: line without text, characters outside [a-z' ] (kept, counted).
- manifest / task: missing audio file, corrupt audio, empty audio (file and n_samples=0), sample
  count differing from the manifest, wrong sample rate (strict: error; default: resampled, counted),
  stereo (error mode; default: down-mixed, counted), malformed rows (field count, n_samples not an
  integer, header without a column, empty file), duplicate ids, empty transcript, unknown-unit
  transcript (above --max-unk-ratio: error; below: counted), missing dict.txt.
- teacher store: store from another PLM, store for other units, truncated array file, index file
  missing, utterance missing from the store, length differing from the target, --load-teacher yes
  without a store.
- loss: NaN/inf loss terms (guards.check_finite) name the term and the batch; NaN input features or
  teacher states (guards.check_inputs) name the utterance, through the real cif criterion; NaN
  weights from a diverged model stop in the CIF middleware before the op.
- CLIs: fairseq-train on a manifest with a duplicate id; the AISHELL-1 prepare script on a folder
  that is not a corpus.
- fuzzing (hypothesis): AISHELL-1 transcript lines, LibriSpeech .trans.txt lines and our TSV
  manifests either parse or raise the documented error (ManifestError for manifests).
"""
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fairseq_hkd.data.audio import COUNTERS, AudioError, read_audio
from fairseq_hkd.data.manifest import ManifestError, read_manifest, write_manifest
from fairseq_hkd.prepare import aishell1, librispeech

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wav(path, n=4000, sr=SR, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = 0.1 * np.sin(np.arange(n) / 7.0).astype(np.float32)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr, subtype="PCM_16")


def _lines(path, *lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


# ------------------------------------------------------------------------------------------ prepare
def test_aishell1_prepare_counts_every_bad_item(tmp_path, caplog):
    root = tmp_path / "data_aishell"
    wav = root / "wav" / "train" / "S0001"
    ids = [f"BAC009S0001W{i:04d}" for i in range(1, 9)]
    _wav(str(wav / f"{ids[0]}.wav"))                        # good
    (wav / f"{ids[1]}.wav").write_bytes(b"RIFF not really a wav")  # corrupt
    _wav(str(wav / f"{ids[2]}.wav"), n=0)                   # empty
    _wav(str(wav / f"{ids[3]}.wav"), sr=8000)               # wrong rate
    _wav(str(wav / f"{ids[4]}.wav"), channels=2)            # stereo
    _wav(str(wav / f"{ids[5]}.wav"))                        # its transcript line has no text
    _wav(str(wav / f"{ids[6]}.wav"))                        # no transcript line at all
    _wav(str(wav / f"{ids[7]}.wav"))                        # good, listed twice
    (root / "transcript").mkdir(parents=True)
    _lines(root / "transcript" / "aishell_transcript_v0.8.txt",
           *[f"{u} 甚至 出现 交易" for u in ids[:5]], ids[5], f"{ids[7]} 你好", f"{ids[7]} 重复")
    with caplog.at_level(logging.WARNING):
        result, problems = aishell1.prepare(str(tmp_path), str(tmp_path / "out"), splits=("train",), jobs=1)
    assert [u.id for u in result["train"]] == [ids[0], ids[7]]
    assert result["train"][1].tgt_text == "你好"  # the first of the duplicate lines
    # the line without text is counted, and then its audio as audio without transcript
    assert problems == Counter({"empty transcript": 1, "duplicate transcript": 1,
                                "train: audio without transcript": 2, "train: unreadable audio": 1,
                                "train: empty audio": 1, "train: sample rate != 16000": 1, "train: not mono": 1})
    assert ids[1] in caplog.text and "transcript_v0.8.txt:6" in caplog.text  # named in the log
    assert [e.id for e in read_manifest(tmp_path / "out" / "train.tsv")] == [ids[0], ids[7]]


def test_librispeech_chapter_counts_bad_lines(tmp_path, caplog):
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    _lines(chapter / "19-198.trans.txt", "19-198-0000 HELLO WORLD", "19-198-0001", "19-198-0002 NAÏVE CAFÉ")
    with caplog.at_level(logging.WARNING):
        texts, _, problems = librispeech.read_chapter(str(chapter), "19", "198")
    assert texts == {"19-198-0000": "hello world", "19-198-0002": "naïve café"}
    assert problems == Counter({"empty transcript": 1, "text outside [a-z' ] (kept)": 1})
    assert "19-198.trans.txt:2" in caplog.text and "19-198.trans.txt:3" in caplog.text


# ------------------------------------------------------------------------------------ manifest / task
HEADER = "id\taudio\tn_samples\ttgt_text"


@pytest.fixture
def wav_dir(tmp_path):
    _wav(str(tmp_path / "good.wav"))
    _wav(str(tmp_path / "empty.wav"), n=0)
    _wav(str(tmp_path / "rate8k.wav"), n=2000, sr=8000)
    _wav(str(tmp_path / "stereo.wav"), channels=2)
    (tmp_path / "corrupt.wav").write_bytes(b"\x00" * 100)
    return tmp_path


MANIFEST_CASES = {  # name: (data row, expected message pattern)
    "missing audio": ("u1\tnope.wav\t4000\thi", r"train\.tsv:2: audio file .*nope\.wav of utterance 'u1' does not exist"),
    "n_samples zero": ("u1\tgood.wav\t0\thi", r"train\.tsv:2: utterance 'u1' has zero-length audio.*remove the line"),
    "n_samples not int": ("u1\tgood.wav\tabc\thi", r"train\.tsv:2: n_samples 'abc' is not an integer"),
    "too few fields": ("u1\tgood.wav\t4000", r"train\.tsv:2: 3 tab-separated fields, header has 4"),
    "tab in transcript": ("u1\tgood.wav\t4000\thi\tthere", r"train\.tsv:2: 5 tab-separated fields.*tabs inside"),
    "empty transcript": ("u1\tgood.wav\t4000\t  ", r"train\.tsv:2: utterance 'u1' has an empty transcript"),
    "empty id": ("\tgood.wav\t4000\thi", r"train\.tsv:2: empty id"),
    "duplicate id": ("u1\tgood.wav\t4000\thi\nu1\tgood.wav\t4000\tho", r"train\.tsv:3: duplicate id 'u1' \(first at line 2\)"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_malformed_manifest_names_line(wav_dir, case):
    row, pattern = MANIFEST_CASES[case]
    path = wav_dir / "train.tsv"
    path.write_text(f"{HEADER}\n{row}\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=pattern):
        read_manifest(path)


def test_manifest_header_and_empty_file(tmp_path):
    (tmp_path / "a.tsv").write_text("id\taudio\ttgt_text\nu\tx.wav\thi\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"a\.tsv:1: header .* lacks column\(s\) \['n_samples'\]"):
        read_manifest(tmp_path / "a.tsv")
    (tmp_path / "b.tsv").write_text("", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"b\.tsv:1: empty manifest"):
        read_manifest(tmp_path / "b.tsv")
    with pytest.raises(FileNotFoundError, match=r"manifest .*c\.tsv not found"):
        read_manifest(tmp_path / "c.tsv")


AUDIO_CASES = {  # file, n_samples in the manifest, options, expected message pattern
    "corrupt": ("corrupt.wav", 100, {}, r"m\.tsv:7: cannot read audio .*corrupt\.wav"),
    "empty file": ("empty.wav", 10, {}, r"m\.tsv:7: audio .*empty\.wav is empty \(0 samples\); remove the line"),
    "count mismatch": ("good.wav", 3999, {}, r"m\.tsv:7: .* has 4000 samples but the manifest says 3999; regenerate"),
    "wrong rate, strict": ("rate8k.wav", 2000, {"strict_sample_rate": True}, r"m\.tsv:7: .*8000 Hz, 16000 Hz expected"),
    "stereo, error": ("stereo.wav", 4000, {"multichannel": "error"}, r"m\.tsv:7: .* has 2 channels; mono is expected"),
}


@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_bad_audio_names_manifest_line(wav_dir, case):
    name, n, opts, pattern = AUDIO_CASES[case]
    with pytest.raises(AudioError, match=pattern):
        read_audio(str(wav_dir / name), "m.tsv:7", n, **opts)


def test_wrong_rate_and_stereo_are_converted_and_counted(wav_dir):
    before = Counter(COUNTERS.counts)
    assert read_audio(str(wav_dir / "rate8k.wav"), "m.tsv:2", 2000).shape == (4000,)
    assert read_audio(str(wav_dir / "stereo.wav"), "m.tsv:3", 4000).shape == (4000,)
    after = COUNTERS.counts - before
    assert after == Counter({"resampled to 16000 Hz": 1, "down-mixed to mono": 1})


@pytest.fixture
def data(tiny_corpus, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(tiny_corpus, d)
    return d


def test_task_unknown_units_error_or_counted(data, caplog):
    from corpus import setup_task

    rows = [l.split("\t") for l in (data / "train.tsv").read_text(encoding="utf-8").splitlines()]
    rows[3][3] = "zzz qqq"  # symbols not in dict.txt
    (data / "train.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"train\.tsv:4: \['q', 'z'\].*--max-unk-ratio 0\.0: rebuild dict\.txt"):
        setup_task(data).load_dataset("train")
    with caplog.at_level(logging.WARNING):
        setup_task(data, "--max-unk-ratio", "0.5").load_dataset("train")
    assert re.search(r"6 of \d+ target symbols .* mapped to <unk>", caplog.text), caplog.text


def test_task_missing_dict_and_teacher(data):
    from corpus import setup_task

    with pytest.raises(FileNotFoundError, match=r"--load-teacher yes but .* no teacher store for split 'train': "
                                                r"run fairseq-hkd-extract-teacher"):
        setup_task(data, "--load-teacher", "yes").load_dataset("train")
    os.remove(data / "dict.txt")
    with pytest.raises(FileNotFoundError, match=r"dict\.txt not found: build it with fairseq-hkd-build-dict"):
        setup_task(data)


# ---------------------------------------------------------------------------------------- teacher store
FP = {"plm": {"name": "bert-a", "config_sha1": "1"}, "tokenizer": {"class": "BertTokenizer"}, "layer": -1,
      "units": {"unit": "char", "dict": "x"}}


def _store(tmp_path, fingerprint=FP):
    from fairseq_hkd.teacher.store import TeacherStoreWriter

    w = TeacherStoreWriter(str(tmp_path), "train", [("u1", 3), ("u2", 2)], 4, "float32", fingerprint)
    w.write("u1", np.ones((3, 4), np.float32))
    w.write("u2", np.ones((2, 4), np.float32))
    w.close()


def test_teacher_store_damage_and_mismatch(tmp_path):
    from fairseq_hkd.teacher.store import open_teacher_store, store_paths, teacher_identity

    _store(tmp_path)
    store = open_teacher_store(str(tmp_path), "train")
    other_plm = teacher_identity({**FP, "plm": {"name": "bert-b", "config_sha1": "2"}, "dim": 4})
    with pytest.raises(ValueError, match=r"train\.teacher\.json: .* another PLM.*plm\.name \(store: 'bert-a', "
                                         r"expected: 'bert-b'\).*same --plm-dir"):
        store.check(["u1"], [3], {"unit": "char"}, expected_plm=other_plm)
    with pytest.raises(ValueError, match=r"other ASR units \(unit \(store: 'char', expected: 'wordpiece'\)\)"):
        store.check(["u1"], [3], {"unit": "wordpiece"})
    with pytest.raises(ValueError, match=r"utterance 'u3' .* has no teacher states.*re-run fairseq-hkd-extract-teacher"):
        store.check(["u1", "u3"], [3, 1], None)
    with pytest.raises(ValueError, match=r"utterance 'u2' .* 2 states but the target has 5 tokens"):
        store.check(["u2"], [5], None)
    paths = store_paths(str(tmp_path), "train")
    with open(paths["array"], "r+b") as f:
        f.truncate(os.path.getsize(paths["array"]) - 8)
    with pytest.raises(ValueError, match=r"train\.teacher\.npy: file has \d+ bytes.*truncated.*re-run fairseq-hkd-extract"):
        open_teacher_store(str(tmp_path), "train")
    os.remove(paths["index"])
    with pytest.raises(FileNotFoundError, match=r"train\.teacher\.index\.tsv is missing"):
        open_teacher_store(str(tmp_path), "train")


# ------------------------------------------------------------------------------------------------ loss
def test_check_finite_names_term_batch_and_fix():
    from fairseq_hkd.criterions.guards import NonFiniteLossError, check_finite

    sample = {"utt_id": ["a", "b"], "net_input": {"src_tokens": torch.zeros(2, 5, 3)}}
    check_finite({"ce": torch.tensor(1.0), "ctc": torch.tensor(0.0)}, sample)  # finite: no error
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss term\(s\) ctc=inf, acd=nan in a batch of 2 "
                                                 r"utterance\(s\): a, b\. The inputs are finite.*lower --lr"):
        check_finite({"ce": torch.tensor(1.0), "ctc": torch.tensor(float("inf")), "acd": torch.tensor(float("nan"))},
                     sample)
    sample["teacher_states"] = torch.zeros(2, 4, 3)
    sample["teacher_states"][1, 2, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"teacher states contain NaN/inf for b: re-run fairseq-hkd-extract"):
        check_finite({"lrd": torch.tensor(float("inf"))}, sample)


def test_nan_features_through_cif_criterion_name_the_utterance(tiny_corpus):
    from corpus import setup_task
    from fairseq_hkd.criterions.guards import NonFiniteLossError

    task = setup_task(tiny_corpus, "--spec-aug-prob", "0")
    task.load_dataset("valid")
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tiny_corpus), "--task", "cif_asr", "--arch", "cif_tiny", "--criterion", "cif"])
    cfg = convert_namespace_to_omegaconf(args)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    ds = task.dataset("valid")
    sample = ds.collater([ds[0], ds[1]])
    criterion(model, sample)  # finite
    sample["net_input"]["src_tokens"][1, 3, 5] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"input features contain NaN/inf for valid0001: check the audio"):
        criterion(model, sample)
    # finite inputs, diverged weights: the CIF middleware stops before its op sees NaN weights
    sample["net_input"]["src_tokens"][1, 3, 5] = 0.0
    with torch.no_grad():
        model.cif.proj.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"CIF weights are NaN/inf for batch row\(s\) \[0, 1\].*training diverged"):
        criterion(model, sample)


# ------------------------------------------------------------------------------------------------ CLIs
def _cli(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_fairseq_train_duplicate_id_is_a_clear_error(data, venv_bin):
    lines = (data / "train.tsv").read_text(encoding="utf-8").splitlines()
    (data / "train.tsv").write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    proc = _cli([venv_bin / "fairseq-train", data, "--user-dir", "fairseq_hkd", "--task", "cif_asr", "--arch",
                 "cif_tiny", "--criterion", "cif", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "20000",
                 "--cpu", "--max-update", "1", "--save-dir", data / "ckpt", "--num-workers", "0"])
    assert proc.returncode != 0
    assert re.search(rf"^error: .*train\.tsv:{len(lines) + 1}: duplicate id 'train0000' \(first at line 2\)",
                     proc.stderr, re.M), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr  # a user error: one line (fairseq_hkd/errors.py)


def test_prepare_cli_on_wrong_folder(tmp_path):
    proc = _cli([sys.executable, "-m", "fairseq_hkd.prepare.aishell1", "--corpus", tmp_path, "--out", tmp_path / "o"])
    assert proc.returncode != 0
    assert "point --corpus at the extracted data_aishell folder" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@FUZZ
@given(st.lists(LINE_TEXT, max_size=8))
def test_fuzz_aishell1_transcript(tmp_path, lines):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    texts, problems = aishell1.read_transcripts(str(path))
    for uid, text in texts.items():
        assert uid and text and not any(c.isspace() for c in text)


@FUZZ
@given(st.lists(LINE_TEXT, max_size=8))
def test_fuzz_librispeech_trans_txt(tmp_path, lines):
    chapter = tmp_path / "c"
    shutil.rmtree(chapter, ignore_errors=True)
    chapter.mkdir()
    (chapter / "1-2.trans.txt").write_text("\n".join(lines), encoding="utf-8")
    texts, flacs, problems = librispeech.read_chapter(str(chapter), "1", "2")
    assert flacs == [] and all(t == " ".join(t.split()) and t for t in texts.values())


FIELD = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


# mostly well-formed rows (so that parsing gets past the first line) with fuzzed fields, plus garbage
OK_FIELD = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=12)
OK_ROW = st.tuples(OK_FIELD, OK_FIELD, st.integers(1, 10 ** 7).map(str), OK_FIELD).map("\t".join)
ROW = st.tuples(FIELD, FIELD, st.one_of(st.integers(-3, 10 ** 7).map(str), FIELD), FIELD).map("\t".join)
ANY_ROW = st.one_of(OK_ROW, ROW, st.lists(FIELD, max_size=6).map("\t".join), LINE_TEXT)


@FUZZ
@given(st.lists(st.one_of(OK_ROW, OK_ROW, ANY_ROW), max_size=5), st.sampled_from([True, True, True, False]))
def test_fuzz_manifest(tmp_path, rows, with_header):
    path = tmp_path / "m.tsv"
    path.write_text("\n".join(([HEADER] if with_header else []) + rows) + "\n", encoding="utf-8")
    try:
        entries = read_manifest(path, check_audio_exists=False)
    except ManifestError as e:
        event("ManifestError")
        assert re.match(re.escape(str(path)) + r"(:\d+)?: ", str(e)), str(e)  # names the file (and line)
        return
    event("parsed")
    assert entries and len({e.id for e in entries}) == len(entries)
    for e in entries:
        assert e.n_samples > 0 and e.tgt_text and e.id and re.fullmatch(re.escape(str(path)) + r":\d+", e.where)
    # a manifest that parses survives a write/read round trip
    write_manifest(tmp_path / "r.tsv", [{"id": e.id, "audio": e.audio, "n_samples": e.n_samples,
                                         "tgt_text": e.tgt_text} for e in entries])
    again = read_manifest(tmp_path / "r.tsv", check_audio_exists=False)
    assert [(e.id, e.n_samples, e.tgt_text) for e in again] == [(e.id, e.n_samples, e.tgt_text) for e in entries]


def test_fairseq_train_bad_model_and_criterion_options_are_one_line(data, venv_bin):
    """A model option the modules cannot build and a negative criterion weight: each stops a real fairseq-train
    before the first update with one ``error:`` line naming the option (errors.py), no traceback."""
    base = [venv_bin / "fairseq-train", data, "--user-dir", "fairseq_hkd", "--task", "cif_asr", "--arch", "cif_tiny",
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "20000", "--cpu", "--max-update", "1",
            "--save-dir", data / "ckpt", "--num-workers", "0"]
    for extra, named in ((["--criterion", "cif", "--encoder-attention-heads", "5"],
                          "--encoder-embed-dim 144 must be a multiple of --encoder-attention-heads 5"),
                         (["--criterion", "cif", "--quantity-weight", "-1"], "--quantity-weight must be >= 0, got -1")):
        proc = _cli(base + extra)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and named in errors[0], errors
    assert not (data / "ckpt" / "checkpoint_last.pt").exists()
