"""scripts/error_sources.py: errors placed on reference words (by hand, and their sum against editdistance),
the split of two readings' errors into shared and own on a two-sentence case computed by hand."""
import importlib.util
import os
import random

import editdistance
import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "error_sources", os.path.join(os.path.dirname(__file__), "..", "scripts", "error_sources.py"))
sources = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sources)


def test_error_positions_by_hand():
    ref = "a b c d".split()
    assert sources.error_positions(ref, "a b c d".split()).tolist() == [0, 0, 0, 0]
    assert sources.error_positions(ref, "a x c d".split()).tolist() == [0, 1, 0, 0]  # substitution
    assert sources.error_positions(ref, "a c d".split()).tolist() == [0, 1, 0, 0]  # deletion of b
    assert sources.error_positions(ref, "a b y c d".split()).tolist() == [0, 0, 1, 0]  # insertion before c
    assert sources.error_positions(ref, "a b c d z".split()).tolist() == [0, 0, 0, 1]  # insertion at the end
    assert sources.error_positions(ref, []).tolist() == [1, 1, 1, 1]
    assert sources.error_positions([], "x y".split()).tolist() == []


def test_error_positions_sum_to_the_edit_distance():
    rng = random.Random(0)
    for _ in range(300):
        ref = [rng.choice("abcd") for _ in range(rng.randint(1, 8))]
        hyp = [rng.choice("abcde") for _ in range(rng.randint(0, 9))]
        pos = sources.error_positions(ref, hyp)
        assert pos.shape == (len(ref),) and pos.min() >= 0
        assert pos.sum() == editdistance.eval(ref, hyp)


def write_generate(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        for i, (ref, hyp) in enumerate(pairs):
            f.write(f"T-{i}\t{ref}\nD-{i}\t-1.0\t{hyp}\n")


def test_parts_by_hand(tmp_path):
    # sentence 0 (4 words): heldout wrong on "b", dev wrong on "b" and "d": 1 shared, 1 its own
    # sentence 1 (2 words): heldout wrong on "x", dev right: heldout's error is its own
    prefix = str(tmp_path / "m")
    write_generate(prefix + ".generate-heldout.txt", [("a b c d", "a q c d"), ("x y", "z y")])
    write_generate(prefix + ".generate-dev.txt", [("a b c d", "a r c"), ("x y", "x y")])
    got = sources.parts(prefix, "heldout", "dev")
    assert got["dev WER"] == pytest.approx(100 * 2 / 6)
    assert got["dev: shared"] == pytest.approx(100 * 1 / 6)
    assert got["dev: own"] == pytest.approx(100 * 1 / 6)
    assert got["heldout: shared"] == pytest.approx(100 * 1 / 6)
    assert got["heldout: own"] == pytest.approx(100 * 1 / 6)


def test_other_sentences_are_refused(tmp_path):
    prefix = str(tmp_path / "m")
    write_generate(prefix + ".generate-heldout.txt", [("a b", "a b")])
    write_generate(prefix + ".generate-dev.txt", [("a c", "a c")])
    with pytest.raises(SystemExit, match="another sentence"):
        sources.parts(prefix)


def test_accent_wers(tmp_path):
    prefix = str(tmp_path / "m")
    write_generate(prefix + ".generate-dev.txt", [("a b", "a x"), ("c d e", "c d e"), ("f g", "")])
    (tmp_path / "dev.tsv").write_text("id\taudio\tn_samples\ttgt_text\tspeaker\n"
                                      "u0\tw\t1\ta b\ten-x+m1\nu1\tw\t1\tc d e\ten-y+f2\nu2\tw\t1\tf g\ten-x+f3\n")
    accents = sources.manifest_accents(str(tmp_path), "dev")
    assert accents == ["en-x", "en-y", "en-x"]
    got = sources.accent_wers(prefix, "dev", accents)
    assert got == {"en-x": pytest.approx(100 * 3 / 4), "en-y": 0.0}
    assert sources.split_wer(prefix, "dev") == pytest.approx(100 * 3 / 7)
    assert np.isfinite(list(got.values())).all()


def test_reread_split_keeps_all_but_the_accent():
    spec = importlib.util.spec_from_file_location(
        "reread_split", os.path.join(os.path.dirname(__file__), "..", "scripts", "reread_split.py"))
    reread = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reread)
    row = lambda i, split, voice, speed, pitch, source, text: dict(  # noqa: E731
        id=i, split=split, voice=voice, speed=speed, pitch=pitch, source=source, text=text)
    rows = [row("dev_00000", "dev", "en-us-nyc+m8", "150", "40", "bible", "a b"),
            row("heldout_00000", "heldout", "en-us+m1", "170", "50", "x", "a b"),
            row("dev_00001", "dev", "en-gb-x-rp+Annie", "190", "60", "y", "c")]
    utts = reread.plan(rows, "dev", "dka", ["en-us", "en-gb"], seed=0)
    assert [u.id for u in utts] == ["dka_00000", "dka_00001"] and {u.split for u in utts} == {"dka"}
    assert [(u.text, u.source, u.speed, u.pitch) for u in utts] == [("a b", "bible", 150, 40), ("c", "y", 190, 60)]
    assert [u.voice.split("+")[1] for u in utts] == ["m8", "Annie"]
    assert all(u.voice.split("+")[0] in ("en-us", "en-gb") for u in utts)
    assert utts == reread.plan(rows, "dev", "dka", ["en-us", "en-gb"], seed=0)  # seeded
    with pytest.raises(SystemExit, match="no utterance of split"):
        reread.plan(rows, "test", "dka", ["en-us"], seed=0)


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not found: decode the split first"):
        sources.parts(str(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        sources.main(["--baseline", "a", "--system", "b"])
    assert "two or more pairs" in capsys.readouterr().err
