"""The synthesized demo corpus: sentence sources, pool filter, and a tiny espeak-ng + sox run."""
import csv
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.prepare import sentences as S
from fairseq_hkd.prepare import synth, voices

needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                               reason="espeak-ng and sox (Debian) are needed")


# ------------------------------------------------------------ text sources, in their real formats

def test_normalize():
    assert S.normalize("Don't look back, something might be gaining on you.") == \
        "don't look back something might be gaining on you"
    assert S.normalize("When there is neither `I' nor `You', can one see it?") == \
        "when there is neither i nor you can one see it"
    assert S.normalize("A clash of doctrine -- it is an opportunity.") == "a clash of doctrine it is an opportunity"
    assert S.normalize("(1) Avoid fried meats") is None  # digits: espeak would say them
    assert S.normalize("Salt & pepper") is None
    assert S.normalize("a café") is None


def test_wordnet_examples():
    text = (
        "  1 This software and database is being provided to you, the LICENSEE, by  \n"
        "  9 the following copyright notice and statements, \"AS IS\" and PRINCETON  \n"
        "00001740 00 a 01 able 0 005 = 05200169 n 0000 ! 00002098 a 0101 | (usually followed by `to') "
        "having the necessary means or skill; \"able to swim\"; \"she was able to program her computer\"  \n"
        "00002098 00 a 01 unable 0 002 = 05200169 n 0000 | not having the necessary means  \n")
    assert S.wordnet_examples(text) == ["able to swim", "she was able to program her computer"]


def test_fortune_sentences():
    text = ("A dream will always triumph over reality, once it is given the chance.\n"
            "\t\t-- Stanislaw Lem\n%\n"
            "A fake fortuneteller can be tolerated.  But an authentic soothsayer should\n"
            "be shot on sight.\n%\n")
    assert S.fortune_sentences(text) == [
        "A dream will always triumph over reality, once it is given the chance.",
        "A fake fortuneteller can be tolerated.", "But an authentic soothsayer should be shot on sight."]


def test_bible_clauses():
    text = ("Ge1:1 In the beginning God created the heaven and the earth.\n"
            "Ge1:3 And God said, Let there be light: and there was light.\n")
    assert S.bible_clauses(text) == ["In the beginning God created the heaven and the earth",
                                     "And God said, Let there be light", "and there was light"]


def test_build_pool_by_hand():
    raw = {"a": ["the cat sat down.", "The cat sat down", "the dog sat", "a dog ran far away now"],
           "b": ["the cat ran", "the dog sat down", "the 2 cats"]}
    pool = S.build_pool(raw, min_words=3, max_words=4, vocab_size=4)
    # candidates (3-4 words): "the cat sat down" (a), "the dog sat" (a), "the cat ran" (b),
    # "the dog sat down" (b); word counts: the 4, sat 3, cat 2, dog 2, down 2, ran 1
    # -> vocab: the, sat, then the ties cat, dog, down broken alphabetically: cat, dog
    assert pool.vocab == ["the", "sat", "cat", "dog"]
    assert pool.sentences == ["the dog sat"]
    assert pool.source == {"the dog sat": "a"}
    assert pool.stats["distinct candidates"] == 4 and pool.stats["b candidates"] == 2


@pytest.mark.skipif(not (os.path.isdir(S.WORDNET_DIR) and os.path.isdir(S.FORTUNE_DIR)
                         and shutil.which("bible")), reason="wordnet-base, fortunes, bible-kjv not installed")
def test_debian_pool_matches_recipe():
    pool = S.build_pool(S.read_sources(S.SOURCES))
    words = {w for s in pool.sentences for w in s.split()}
    assert len(pool.vocab) == 700 and words <= set(pool.vocab)
    assert all(4 <= len(s.split()) <= 12 and S.normalize(s) == s for s in pool.sentences)
    assert {pool.source[s] for s in pool.sentences} == set(S.SOURCES)
    assert len(pool.sentences) >= 3350  # the default 3,000 + 150 + 200 fit


# ------------------------------------------------------------ tiny synthesis run

SENTENCES = ["the lord is my shepherd", "and god said let there be light", "a dream will always triumph",
             "he walked in all the ways of his father", "wisdom is before him", "then shall they also answer him",
             "we were at last able to buy a car", "and they went up to the city",
             "the son of man is come", "what is the way", "and it was so", "i will go down now and see"]


def _args(out, sentence_file, *extra):
    return synth.get_parser().parse_args(
        ["--out", str(out), "--sentences", str(sentence_file), "--vocab-size", "0", "--min-words", "3",
         "--n-train", "6", "--n-heldout", "2", "--n-test", "2", "--seed", "7", *extra])


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    (d / "sentences.txt").write_text("".join(s.capitalize() + ".\n" for s in SENTENCES), encoding="utf-8")
    out = d / "corpus"
    manifests = synth.prepare(_args(out, d / "sentences.txt"))
    return d, out, manifests


@needs_tts
def test_tiny_corpus_audio_and_transcripts(tiny_synth):
    _, out, _ = tiny_synth
    with open(out / "utterances.tsv", encoding="utf-8") as f:
        plan = {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert len(plan) == 12
    texts = {}
    for split, n in (("train", 6), ("heldout", 2), ("test", 2), ("dev", 2)):
        entries = read_manifest(out / f"{split}.tsv")
        assert len(entries) == n
        for e in entries:
            p = plan[e.id]
            assert (p["split"], p["text"], p["voice"]) == (split, e.tgt_text, e.speaker)
            assert e.tgt_text in SENTENCES
            wav, sr = sf.read(e.audio, dtype="float32")
            assert sr == 16000 and wav.ndim == 1 and len(wav) == e.n_samples
            assert np.sqrt(np.mean(wav ** 2)) > 1e-3  # speech, not silence
            # espeak-ng speaks at ~speed words/min: the duration follows words and speed
            nominal = len(e.tgt_text.split()) * 60.0 / int(p["speed"])
            assert 0.3 < len(wav) / sr / nominal < 3.0, (e.id, len(wav) / sr, nominal)
            assert 130 <= int(p["speed"]) <= 200 and 30 <= int(p["pitch"]) <= 70
            texts.setdefault(split, set()).add(e.tgt_text)
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["heldout"])
    assert not (texts["heldout"] & texts["test"])
    assert texts["dev"] == texts["heldout"]  # dev reads heldout's sentences with other voices


@needs_tts
def test_test_voices_never_in_training(tiny_synth):
    _, out, manifests = tiny_synth
    train_voices = {u.speaker for s in ("train", "heldout") for u in manifests[s]}
    test_voices = {u.speaker for u in manifests["test"]}
    assert train_voices <= set(synth.TRAIN_VOICES) and test_voices <= set(synth.TEST_VOICES)
    assert not train_voices & test_voices
    bases = lambda vs: {v.split("+")[0] for v in vs}  # noqa: E731
    variants = lambda vs: {v.split("+")[1] for v in vs}  # noqa: E731
    assert not bases(synth.TRAIN_VOICES) & bases(synth.TEST_VOICES)
    assert not variants(synth.TRAIN_VOICES) & variants(synth.TEST_VOICES)
    with pytest.raises(ValueError, match="in both"):
        synth.plan_corpus(S.build_pool({"x": SENTENCES}, 3, 12, 0), {"train": 1, "heldout": 0, "test": 1}, 0,
                          ["en-us+m1"], ["en-us+m1"], (150, 150), (50, 50))


def test_training_voice_sets():
    """The narrow set is the corpus of before 2026-12-05, voice for voice and in order (voices are drawn
    by index); the wide set keeps it as its first variants; a set's name expands, voices pass through."""
    narrow = [f"{a}+{v}" for a in ("en-us", "en-gb", "en-gb-scotland", "en-029")
              for v in ("m1", "m2", "m3", "m4", "f1", "f2", "f3")]
    assert voices.TRAIN_VOICE_SETS["narrow"] == narrow
    assert len(voices.TRAIN_VOICES) == 204 == len(set(voices.TRAIN_VOICES))
    assert voices.TRAIN_VARIANTS["wide"][:7] == voices.TRAIN_VARIANTS["narrow"]
    assert voices.train_voices(["narrow"]) == narrow and voices.train_voices(["wide"]) == voices.TRAIN_VOICES
    assert voices.train_voices(["en-us+m1", "en-gb+f1"]) == ["en-us+m1", "en-gb+f1"]
    assert synth.get_parser().parse_args(["--out", "x"]).train_voices == ["wide"]


def _espeak_variants_dir():
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Data at: (\S+)", out)
    return os.path.join(m.group(1), "voices", "!v") if m else None


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian) is needed")
def test_training_variants_exist_and_differ_from_test_and_dev_variants():
    """Every training variant is a file of espeak-ng (a missing one would fall back silently), and none
    defines the same voice as a test or dev variant under another name (formants, pitch, ...)."""
    vdir = _espeak_variants_dir()
    assert vdir and os.path.isdir(vdir), vdir

    def definition(variant):
        with open(os.path.join(vdir, variant), encoding="utf-8", errors="replace") as f:
            return sorted(" ".join(line.split()) for line in f
                          if line.strip() and not line.lstrip().startswith(("name", "language", "//")))

    held_out = {v.split("+")[1] for v in voices.TEST_VOICES + voices.DEV_VOICES}
    for variant in voices.TRAIN_VARIANTS["wide"]:
        assert os.path.isfile(os.path.join(vdir, variant)), variant
        assert variant not in held_out
        for other in held_out:
            assert definition(variant) != definition(other), (variant, other)
            assert not (variant.lower().startswith(other.lower()) and len(other) > 2), (variant, other)  # steph2


@needs_tts
def test_dev_voices_are_neither_training_nor_test_voices(tiny_synth):
    _, out, manifests = tiny_synth
    dev_voices = {u.speaker for u in manifests["dev"]}
    assert dev_voices <= set(synth.DEV_VOICES)
    variants = lambda vs: {v.split("+")[1] for v in vs}  # noqa: E731
    bases = lambda vs: {v.split("+")[0] for v in vs}  # noqa: E731
    assert not variants(synth.DEV_VOICES) & (variants(synth.TRAIN_VOICES) | variants(synth.TEST_VOICES))
    assert not bases(synth.DEV_VOICES) & bases(synth.TRAIN_VOICES)  # unseen accents, like test's
    heldout = {u.id.split("_")[1]: u for u in manifests["heldout"]}
    for u in manifests["dev"]:  # dev_0000i reads heldout_0000i's sentence
        assert u.tgt_text == heldout[u.id.split("_")[1]].tgt_text


def test_dev_split_changes_no_other_split():
    pool = S.build_pool({"x": SENTENCES}, 3, 12, 0)
    sizes = {"train": 6, "heldout": 3, "test": 2}
    args = (5, synth.TRAIN_VOICES, synth.TEST_VOICES, (130, 200), (30, 70))
    without = synth.plan_corpus(pool, sizes, *args)
    with_dev = synth.plan_corpus(pool, {**sizes, "dev": 2}, *args, synth.DEV_VOICES)
    assert [u for u in with_dev if u.split != "dev"] == without
    dev = [u for u in with_dev if u.split == "dev"]
    assert [u.text for u in dev] == [u.text for u in without if u.split == "heldout"][:2]
    assert all(u.voice in synth.DEV_VOICES for u in dev)
    with pytest.raises(ValueError, match="--n-dev 4 is more than --n-heldout 3"):
        synth.plan_corpus(pool, {**sizes, "dev": 4}, *args, synth.DEV_VOICES)
    with pytest.raises(ValueError, match="in both --train-voices and --dev-voices"):
        synth.plan_corpus(pool, {**sizes, "dev": 1}, *args, ["en-us+m1"])


def test_train_readings_add_other_voices_and_change_nothing_else():
    pool = S.build_pool({"x": SENTENCES}, 3, 12, 0)
    sizes = {"train": 6, "heldout": 3, "test": 2, "dev": 2}
    voices = ["en-us+m1", "en-us+m2", "en-us+f1"]
    args = (5, voices, synth.TEST_VOICES, (130, 200), (30, 70), synth.DEV_VOICES)
    one = synth.plan_corpus(pool, sizes, *args)
    three = synth.plan_corpus(pool, sizes, *args, train_readings=3)
    assert [u for u in three if "_r" not in u.id] == one  # the first reading and every other split unchanged
    first = {u.id: u for u in one if u.split == "train"}
    for k in (2, 3):
        extra = [u for u in three if u.id.endswith(f"_r{k}")]
        assert sorted(u.id[:-3] for u in extra) == sorted(first) and all(u.split == "train" for u in extra)
    for sid, u in first.items():  # three readings of one sentence by three different voices
        reads = [v for v in three if v.id.split("_r")[0] == sid]
        assert len(reads) == 3 and {v.text for v in reads} == {u.text}
        assert sorted(v.voice for v in reads) == sorted(voices)
    assert len({u.id for u in three}) == len(three)
    with pytest.raises(ValueError, match="more than the 3 training voices"):
        synth.plan_corpus(pool, sizes, *args, train_readings=4)
    with pytest.raises(ValueError, match="must be >= 1"):
        synth.plan_corpus(pool, sizes, *args, train_readings=0)


@needs_tts
def test_deterministic_and_resumable(tiny_synth):
    d, out, _ = tiny_synth
    # same seed elsewhere: byte-identical audio (sox runs without dither)
    out2 = d / "again"
    synth.prepare(_args(out2, d / "sentences.txt"))
    for wav in sorted((out / "wav" / "train").iterdir()):
        assert wav.read_bytes() == (out2 / "wav" / "train" / wav.name).read_bytes()
    # resume: a deleted file is made again, the others are left alone
    victim = out2 / "wav" / "test" / "test_00001.wav"
    ref = victim.read_bytes()
    victim.unlink()
    keep = out2 / "wav" / "train" / "train_00000.wav"
    os.utime(keep, (1, 1))
    synth.prepare(_args(out2, d / "sentences.txt"))
    assert victim.read_bytes() == ref and keep.stat().st_mtime == 1
    # resuming with other settings is refused
    with pytest.raises(ValueError, match="seed differ"):
        synth.prepare(_args(out2, d / "sentences.txt", "--seed", "8"))
    # a folder made before the dev split existed (its config lacks n_dev, dev_voices) gets dev added,
    # nothing else synthesized again; another dev size on a folder that records one is refused
    config = out2 / "synth_config.json"
    old = json.loads(config.read_text())
    shutil.rmtree(out2 / "wav" / "dev")
    (out2 / "dev.tsv").unlink()
    config.write_text(json.dumps({k: v for k, v in old.items() if k not in ("n_dev", "dev_voices")}))
    synth.prepare(_args(out2, d / "sentences.txt"))
    assert json.loads(config.read_text())["n_dev"] == 2 and keep.stat().st_mtime == 1
    assert len(read_manifest(out2 / "dev.tsv")) == 2
    with pytest.raises(ValueError, match="n_dev differ"):
        synth.prepare(_args(out2, d / "sentences.txt", "--n-dev", "1"))
    # a folder made before --train-readings existed holds one reading: it resumes with 1, refuses 2
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "train_readings"}))
    synth.prepare(_args(out2, d / "sentences.txt"))
    with pytest.raises(ValueError, match="train_readings differ"):
        synth.prepare(_args(out2, d / "sentences.txt", "--train-readings", "2"))


def test_pool_too_small_is_a_clear_error():
    pool = S.build_pool({"x": SENTENCES}, 3, 12, 0)
    with pytest.raises(ValueError, match="pool has only 12"):
        synth.plan_corpus(pool, {"train": 10, "heldout": 2, "test": 2}, 0, synth.TRAIN_VOICES,
                          synth.TEST_VOICES, (130, 200), (30, 70))
