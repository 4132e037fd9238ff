"""Teacher store: round trip, and every mismatch / damage is a clear error naming the culprit."""
import json
import os

import numpy as np
import pytest

from fairseq_hkd.teacher.store import TeacherStoreWriter, open_teacher_store, store_paths, teacher_identity

UNITS = {"unit": "wordpiece", "tokenizer": "BertTokenizer", "tokenizer_vocab.txt": "abc123", "dict": "d1"}
FP = {"plm": {"name": "tiny-bert", "config_sha1": "c0ffee"}, "tokenizer": {"class": "BertTokenizer"},
      "layer": -1, "units": UNITS}


def _write(tmp_path, dtype="float32", split="train", lengths=(("u1", 3), ("u2", 1), ("u3", 5)), dim=4, seed=0):
    rng = np.random.default_rng(seed)
    states = {u: rng.standard_normal((n, dim)).astype(np.float32) for u, n in lengths}
    w = TeacherStoreWriter(str(tmp_path), split, list(lengths), dim, dtype, FP)
    for u, _ in reversed(lengths):  # any write order
        w.write(u, states[u])
    w.close()
    return states


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2e-3)])
def test_round_trip(tmp_path, dtype, tol):
    states = _write(tmp_path, dtype)
    store = open_teacher_store(str(tmp_path), "train")
    assert store.dim == 4 and len(store) == 3 and store.utt_ids == ["u1", "u2", "u3"]
    assert store.fingerprint["dtype"] == dtype and store.fingerprint["plm"]["name"] == "tiny-bert"
    assert store.fingerprint["num_rows"] == 9
    for u, x in states.items():
        got = store.get(u)
        assert got.shape == x.shape and got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got.astype(np.float32), x, rtol=tol, atol=tol)
    store.check(["u3", "u1"], [5, 3], UNITS)  # subset, any order: fine


def test_pickle_ships_paths_not_rows(tmp_path):
    import pickle

    states = _write(tmp_path, lengths=(("u1", 3000), ("u2", 1)), dim=64)
    store = open_teacher_store(str(tmp_path), "train")
    blob = pickle.dumps(store)
    assert len(blob) < 10_000  # the array itself is 768 kB
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.get("u1"), states["u1"])
    assert copy.dim == 64 and copy.fingerprint == store.fingerprint


def test_absent_store_is_none(tmp_path):
    assert open_teacher_store(str(tmp_path), "train") is None
    _write(tmp_path)
    assert open_teacher_store(str(tmp_path), "valid") is None


def test_missing_utterance(tmp_path):
    _write(tmp_path)
    store = open_teacher_store(str(tmp_path), "train")
    with pytest.raises(ValueError, match=r"'u9'.*no teacher states.*fairseq-hkd-extract-teacher"):
        store.check(["u1", "u9"], [3, 2], UNITS)
    with pytest.raises(KeyError, match="u9"):
        store.get("u9")


def test_length_differs(tmp_path):
    _write(tmp_path)
    store = open_teacher_store(str(tmp_path), "train")
    with pytest.raises(ValueError, match=r"'u2'.*1 states but the target has 2 tokens"):
        store.check(["u1", "u2", "u3"], [3, 2, 5], UNITS)


def test_other_units_tokenizer_or_plm(tmp_path):
    _write(tmp_path)
    store = open_teacher_store(str(tmp_path), "train")
    other_vocab = dict(UNITS, **{"tokenizer_vocab.txt": "fff999"})
    with pytest.raises(ValueError, match=r"other ASR units.*tokenizer_vocab.txt"):
        store.check(["u1"], [3], other_vocab)
    with pytest.raises(ValueError, match=r"other ASR units.*unit"):
        store.check(["u1"], [3], {"unit": "char", "lowercase": "False"})
    store.check(["u1"], [3], dict(UNITS, dict="rebuilt"))  # dict.txt hash alone does not matter
    other_plm = teacher_identity(dict(FP, plm={"name": "bert-base", "config_sha1": "123"}, dim=4))
    with pytest.raises(ValueError, match=r"another PLM.*plm.name"):
        store.check(["u1"], [3], UNITS, expected_plm=other_plm)
    store.check(["u1"], [3], UNITS, expected_plm=teacher_identity(store.fingerprint))


def test_truncated_array(tmp_path):
    _write(tmp_path)
    path = store_paths(str(tmp_path), "train")["array"]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 8)
    with pytest.raises(ValueError, match=r"train.teacher.npy.*truncated"):
        open_teacher_store(str(tmp_path), "train")


def test_files_from_different_extractions(tmp_path):
    _write(tmp_path)
    p = store_paths(str(tmp_path), "train")
    with open(p["index"], "a") as f:
        f.write("u4\t9\t2\t-\n")
    with pytest.raises(ValueError, match="different extractions"):
        open_teacher_store(str(tmp_path), "train")
    os.remove(p["index"])
    with pytest.raises(FileNotFoundError, match="index.tsv is missing"):
        open_teacher_store(str(tmp_path), "train")


def test_fingerprint_version(tmp_path):
    _write(tmp_path)
    p = store_paths(str(tmp_path), "train")["fingerprint"]
    fp = json.load(open(p))
    fp["format_version"] = 99
    json.dump(fp, open(p, "w"))
    with pytest.raises(ValueError, match="format version 99, this code reads 1, 2"):
        open_teacher_store(str(tmp_path), "train")


def test_transcript_hashes_in_the_index(tmp_path):
    """The index's 4th column is the SHA-1 of each transcript (checked with hashlib here); check() with
    transcripts compares them, and names the utterance's manifest line."""
    import hashlib

    texts = {"u1": "你好吗", "u2": "a", "u3": "play the song"}
    w = TeacherStoreWriter(str(tmp_path), "train", [("u1", 4), ("u2", 2), ("u3", 4)], 2, "float32", FP,
                           transcripts=texts)
    for u, n in (("u1", 4), ("u2", 2), ("u3", 4)):
        w.write(u, np.zeros((n, 2)))
    w.close()
    rows = [l.split("\t") for l in open(store_paths(str(tmp_path), "train")["index"], encoding="utf-8").read().splitlines()]
    assert rows == [[u, str(o), str(n), hashlib.sha1(texts[u].encode("utf-8")).hexdigest()[:16]]
                    for u, o, n in (("u1", 0, 4), ("u2", 4, 2), ("u3", 6, 4))]
    store = open_teacher_store(str(tmp_path), "train")
    assert store.has_transcript_hashes and store.fingerprint["format_version"] == 2
    store.check(["u3", "u1"], [4, 4], UNITS, transcripts=["play the song", "你好吗"])  # subset, any order
    with pytest.raises(ValueError, match=r"^d/valid\.tsv:7: utterance 'u1' of split 'train': the transcript '你好嗎' "
                                         r"is not the one .*; rebuild the store: fairseq-hkd-extract-teacher "
                                         r"--manifest \S*d/valid\.tsv "):
        store.check(["u3", "u1"], [4, 4], UNITS, transcripts=["play the song", "你好嗎"],
                    locations=["d/valid.tsv:6", "d/valid.tsv:7"])
    with pytest.raises(ValueError, match="no transcript given for 1 utterances, first 'b'"):
        TeacherStoreWriter(str(tmp_path), "x", [("a", 1), ("b", 1)], 2, transcripts={"a": "x"})


def test_writer_errors(tmp_path):
    w = TeacherStoreWriter(str(tmp_path), "train", [("a", 2), ("b", 1)], 3)
    with pytest.raises(ValueError, match=r"'a'.*shape \(3, 3\)"):
        w.write("a", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        w.write("a", np.full((2, 3), np.nan))
    w.write("a", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="never written, first 'b'"):
        w.close()
    assert open_teacher_store(str(tmp_path), "train") is None  # nothing half-written opens
    with pytest.raises(ValueError, match="duplicate"):
        TeacherStoreWriter(str(tmp_path), "train", [("a", 2), ("a", 1)], 3)
    w16 = TeacherStoreWriter(str(tmp_path), "x", [("a", 1)], 2, "float16")
    with pytest.raises(ValueError, match="overflow float16"):
        w16.write("a", np.array([[1e6, 0.0]]))
