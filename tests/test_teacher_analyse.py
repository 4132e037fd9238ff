"""fairseq_hkd.teacher.analyse on tiny hand-made teacher stores whose numbers can be worked out by hand."""
import json
import math

import numpy as np
import pytest
import torch

from fairseq_hkd.data.manifest import write_manifest
from fairseq_hkd.data.units import Units
from fairseq_hkd.teacher import analyse
from fairseq_hkd.teacher.store import TeacherStoreWriter

# fairseq Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3, then dict.txt in order: a=4 b=5 c=6
EOS, A, B, C = 2, 4, 5, 6
DIM = 7
TRAIN = ["ab", "ba", "abc", "cab", "cc"]  # every unit in >= 2 utterances; 17 positions incl. </s>
HELDOUT = ["ca", "bac"]
SYM = {"a": A, "b": B, "c": C}


def tokens_of(text):
    return [SYM[ch] for ch in text] + [EOS]


def one_hot(tokens):
    return np.eye(DIM, dtype=np.float32)[tokens]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "dict.txt").write_text("a 10\nb 10\nc 10\n", encoding="utf-8")
    units = Units("char", dict_path=str(tmp_path / "dict.txt"))
    for split, texts in (("train", TRAIN), ("heldout", HELDOUT)):
        ids = [f"{split}{i}" for i in range(len(texts))]
        write_manifest(tmp_path / f"{split}.tsv", [{"id": u, "audio": f"{u}.wav", "n_samples": 16000, "tgt_text": t}
                                                 for u, t in zip(ids, texts)])
        w = TeacherStoreWriter(str(tmp_path), split, [(u, len(t) + 1) for u, t in zip(ids, texts)], DIM, "float16",
                               {"units": units.fingerprint(), "plm": {"name": "one-hot"}},
                               transcripts=dict(zip(ids, texts)))
        for u, t in zip(ids, texts):
            w.write(u, one_hot(tokens_of(t)))
        w.close()
    return tmp_path


def test_one_hot_store_end_to_end(data_dir, capsys):
    """States = one-hot of the unit id: retrieval is perfect, the pairing cosines are 1 / 0, LRD of
    the per-unit mean is 0, and the InfoNCE of the oracle follows from the unit counts of one batch
    that holds all of train with K = N - 1 (every other position is a negative)."""
    tau = 0.5
    n = sum(len(t) + 1 for t in TRAIN)  # 17
    out_json = data_dir / "report.json"
    rep = analyse.cli_main([str(data_dir), "--json", str(out_json), "--temperatures", str(tau),
                            "--batch-tokens", "1000", "--num-batches", "2", "--acd-negatives", str(n - 1),
                            "--num-pairs", "500"])
    text = capsys.readouterr().out
    assert "1. retrieval" in text and "4. LRD scale" in text
    assert json.loads(out_json.read_text())["acd"]["N_mean"] == n

    r = rep["retrieval"]
    for g in ("all", "eos", "top", "rest"):
        if r["groups"][g]["n"]:
            assert r["groups"][g]["nn_acc"] == 1.0 and r["groups"][g]["centroid_acc"] == 1.0, g
    assert r["groups"]["all"]["n"] == 3 + 4 and r["groups"]["eos"]["n"] == 2
    assert r["query_rows_unit_unseen_in_ref"] == 0 and r["query_utts_with_transcript_in_ref"] == 0

    p = rep["pairing"]
    assert p["sep_sep"]["mean"] == pytest.approx(1.0) and p["same_unit"]["mean"] == pytest.approx(1.0)
    assert p["sep_other"]["mean"] == pytest.approx(0.0)
    assert p["same_unit"]["n"] == 500

    a = rep["acd"]
    assert a["N_mean"] == n and a["K_mean"] == n - 1
    counts = {A: 4, B: 4, C: 4, EOS: 5}
    rows = [u for t in TRAIN for u in tokens_of(t)]
    same = [counts[u] - 1 for u in rows]  # same-unit negatives of each position
    assert a["false_negative_share"] == pytest.approx(sum(same) / (n * (n - 1)))
    assert a["false_negative_share_eos"] == pytest.approx(4 / (n - 1))
    assert a["positives_with_a_false_negative"] == 1.0
    for thr in a["cos_thresholds"].values():  # one-hot: a negative has cos 1 (same unit) or 0
        assert thr["positives_with_neg_above"] == 1.0 and thr["positives_with_other_unit_neg_above"] == 0.0
    inv = 1.0 / tau
    no_mask = np.mean([math.log((1 + c) * math.exp(inv) + (n - 1 - c)) - inv for c in same])
    masked = np.mean([math.log(1 + (n - 1 - c) * math.exp(-inv)) for c in same])
    for student in ("oracle", "unit_centroid"):  # every unit is in >= 2 utterances: centroid = one-hot
        got = {o["mask_same_token"]: o for o in a["oracle"] if o["student"] == student and o["tau"] == tau}
        assert got[False]["loss"] == pytest.approx(no_mask, rel=1e-5)
        assert got[True]["loss"] == pytest.approx(masked, rel=1e-5)
        assert got[False]["acc"] == 0.0  # a same-unit negative ties the positive
        assert got[True]["acc"] == 1.0
        assert got[False]["loss_eos"] == pytest.approx(math.log(5 * math.exp(inv) + (n - 5)) - inv, rel=1e-5)
    assert a["checked_against_losses_acd_loss_max_rel_err"] < 1e-5

    d = rep["lrd"]
    assert d["sq_norm_ref"]["all"] == pytest.approx(1.0) and d["lrd_zero"]["all"] == pytest.approx(1.0)
    assert d["lrd_per_unit_mean"]["all"] == pytest.approx(0.0, abs=1e-9)
    assert d["lrd_per_unit_mean_in_sample"]["all"] == pytest.approx(0.0, abs=1e-9)


def test_same_split_retrieval_excludes_own_utterance():
    """Unit 9 occurs only in utterance 0 (twice): with the own utterance excluded its rows can be
    retrieved neither by neighbour nor by centroid; every other row still is."""
    toks = [[9, 9, 4, EOS], [4, 5, EOS], [5, 4, EOS]]
    split = analyse.SplitStates.from_arrays("train", [np.eye(12, dtype=np.float32)[t] for t in toks], toks)
    r = analyse.retrieval(split, split, EOS, top_units=1)
    total = sum(map(len, toks))
    assert r["groups"]["all"]["nn_acc"] == pytest.approx((total - 2) / total)
    assert r["groups"]["all"]["centroid_acc"] == pytest.approx((total - 2) / total)
    assert r["groups"]["eos"]["nn_acc"] == 1.0
    assert r["top_units"] == [4]  # 4 occurs 3 times; </s> is not counted among the top units


def test_centroid_student_leaves_own_utterance_out():
    toks = [[4, 4, EOS], [4, EOS], [5, EOS]]
    states = [np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32),
              np.array([[0, 1, 0], [0, 0, 1]], np.float32),
              np.array([[1, 1, 0], [0, 0, 1]], np.float32)]
    split = analyse.SplitStates.from_arrays("train", states, toks)
    z = analyse.centroid_student(split)
    np.testing.assert_allclose(z[0], [0, 1, 0], atol=1e-6)  # unit 4 elsewhere: utterance 1 only
    np.testing.assert_allclose(z[1], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(z[3], [1, 0, 0], atol=1e-6)  # utterance 0's two rows, normalised
    np.testing.assert_allclose(z[5], [0, 0, 0], atol=1e-6)  # unit 5: no other utterance -> 0 (chance)
    np.testing.assert_allclose(z[2], [0, 0, 1], atol=1e-6)  # </s>


def test_lrd_scale_by_hand():
    """Unit 4 in train: [1,0] and [3,0] -> mean [2,0]; heldout [2,1] -> squared error 1. A unit unseen
    in train falls back to the global mean."""
    ref = analyse.SplitStates.from_arrays("train", [np.array([[1, 0], [0, 2]], np.float32),
                                                     np.array([[3, 0], [0, 4]], np.float32)],
                                          [[4, EOS], [4, EOS]])
    query = analyse.SplitStates.from_arrays("heldout", [np.array([[2, 1], [7, 7], [0, 3]], np.float32)],
                                            [[4, 8, EOS]])
    d = analyse.lrd_scale(ref, query, EOS, lrd_weight=0.5)
    # per-unit: unit 4 -> 1; unit 8 unseen -> global mean [1, 1.5]: 36 + 30.25; </s> mean [0, 3] -> 0
    assert d["lrd_per_unit_mean"]["all"] == pytest.approx((1 + 36 + 30.25 + 0) / 3)
    assert d["lrd_per_unit_mean"]["eos"] == pytest.approx(0.0)
    assert d["lrd_per_unit_mean_in_sample"]["all"] == pytest.approx((1 + 1 + 1 + 1) / 4)
    assert d["sq_norm_query"]["all"] == pytest.approx((5 + 98 + 9) / 3)
    assert d["weighted_lrd_per_unit_mean"] == pytest.approx(0.5 * (1 + 36 + 30.25) / 3)
    assert d["query_rows_unit_unseen_in_ref"] == 1
