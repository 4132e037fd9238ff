"""The recipes' prepare.sh scripts, every stage, on small fake corpus trees in the real layouts.

AISHELL-1 and LibriSpeech trees are those of test_prepare_corpora.py (transcripts listing
utterances without audio, upper-case LibriSpeech transcripts, flac); the teachers are tiny random
BERTs saved to a folder (a Chinese one with one token per character, an uncased English one).
Each stage's product is checked against what the tree holds; a rerun skips the finished stages.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from fairseq_hkd.data.manifest import read_manifest
from test_prepare_corpora import AISHELL_AUDIO, AISHELL_TRANSCRIPT, LIBRI

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _audio(path, seconds, seed, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.2 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16", format=fmt)


def _tiny_bert(d, tokens, lower):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + tokens))
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=lower).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(str(d))
    return str(d)


def _run(script, *args):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", script), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _check_common(data, splits, teacher_splits, dim):
    for split in splits:
        entries = read_manifest(os.path.join(data, f"{split}.tsv"))
        with open(os.path.join(data, f"{split}.fbank.index.json")) as f:
            index = json.load(f)
        assert index["ids"] == [e.id for e in entries]
        # 25 ms windows every 10 ms
        assert index["frames"] == [1 + (e.n_samples - 400) // 160 for e in entries]
    cmvn = np.load(os.path.join(data, "cmvn.npz"))
    assert cmvn["mean"].shape == (80,) and np.all(cmvn["std"] > 0)
    from fairseq_hkd.teacher.store import open_teacher_store

    for split in teacher_splits:
        store = open_teacher_store(data, split)
        assert store is not None and store.dim == dim


@pytest.mark.slow
def test_aishell1_prepare_sh(tmp_path):
    root = tmp_path / "data_aishell"
    (root / "transcript").mkdir(parents=True)
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(AISHELL_TRANSCRIPT, encoding="utf-8")
    for i, (split, spk, utt) in enumerate(AISHELL_AUDIO):
        _audio(str(root / "wav" / split / spk / f"{utt}.wav"), 0.5 + 0.1 * i, i)
    chars = sorted({c for ln in AISHELL_TRANSCRIPT.splitlines() for c in "".join(ln.split()[1:])})
    plm = _tiny_bert(tmp_path / "bert-zh", chars, lower=False)
    data = str(tmp_path / "data")

    log = _run("aishell1/prepare.sh", "--corpus", str(root), "--plm", plm, "--data", data, "--nj", "1")
    texts = {ln.split()[0]: "".join(ln.split()[1:]) for ln in AISHELL_TRANSCRIPT.splitlines()}
    for split in ("train", "dev", "test"):
        ids = [e.id for e in read_manifest(os.path.join(data, f"{split}.tsv"))]
        assert ids == sorted(u for s, _, u in AISHELL_AUDIO if s == split and u in texts)
    train = read_manifest(os.path.join(data, "train.tsv"))
    with open(os.path.join(data, "dict.txt"), encoding="utf-8") as f:
        symbols = {ln.split()[0] for ln in f}
    assert symbols == {c for e in train for c in e.tgt_text}
    _check_common(data, ("train", "dev", "test"), ("train", "dev"), 16)
    from fairseq_hkd.teacher.store import open_teacher_store

    store = open_teacher_store(data, "train")
    for e in train:  # one state per character + </s>
        assert store.get(e.id).shape == (len(e.tgt_text) + 1, 16)
    assert all(os.path.exists(os.path.join(data, f".stage{n}.done")) for n in range(5))
    assert "stage 1: manifests" in log
    again = _run("aishell1/prepare.sh", "--corpus", str(root), "--plm", plm, "--data", data)
    assert again.count("done before, skipped") == 5


@pytest.mark.slow
def test_librispeech_prepare_sh(tmp_path):
    root = tmp_path / "LibriSpeech"
    for subset, chapters in LIBRI.items():
        for (spk, chap), utts in chapters.items():
            d = root / subset / spk / chap
            d.mkdir(parents=True)
            (d / f"{spk}-{chap}.trans.txt").write_text(
                "".join(f"{spk}-{chap}-{i:04d} {t}\n" for i, t, _ in utts), encoding="utf-8")
            for i, _, n in utts:
                if n is not None:
                    _audio(str(d / f"{spk}-{chap}-{i:04d}.flac"), 0.6 + 0.1 * i, i, fmt="FLAC")
    shutil.copytree(root / "dev-clean", root / "train-clean-100")  # a training subset to merge
    # BERT's basic tokenizer splits at apostrophes: quilter's -> quilter ' s, one WordPiece each here
    pieces = lambda text: re.findall(r"[a-z]+|'", text.lower())  # noqa: E731
    words = sorted({p for ch in LIBRI.values() for us in ch.values() for _, t, _ in us for p in pieces(t)})
    plm = _tiny_bert(tmp_path / "bert-en", words, lower=True)
    data = str(tmp_path / "data")

    _run("librispeech/prepare.sh", "--corpus", str(root), "--plm", plm, "--data", data, "--nj", "1",
         "--train-subsets", "train-clean-100", "--dev-subsets", "dev-clean", "--test-subsets", "test-clean")
    train = read_manifest(os.path.join(data, "train.tsv"))
    assert [e.id for e in train] == [e.id for e in read_manifest(os.path.join(data, "train-clean-100.tsv"))]
    assert train[0].tgt_text == "mister quilter is the apostle of the middle classes"
    with open(os.path.join(data, "dict.txt"), encoding="utf-8") as f:
        counts = dict(ln.split() for ln in f)
    seen = {p for e in train for p in pieces(e.tgt_text)}
    assert {w for w, c in counts.items() if int(c) > 0} == seen
    assert set(words) <= set(counts)  # --plm-vocab: test words unseen in train are listed too
    _check_common(data, ("train", "dev-clean", "test-clean"), ("train", "dev-clean"), 16)
    from fairseq_hkd.teacher.store import open_teacher_store

    store = open_teacher_store(data, "dev-clean")
    for e in read_manifest(os.path.join(data, "dev-clean.tsv")):
        assert store.get(e.id).shape == (len(pieces(e.tgt_text)) + 1, 16)


@pytest.mark.skipif(any(shutil.which(c) is None for c in ("espeak-ng", "sox", "bible"))
                    or not os.path.isdir("/usr/share/wordnet") or not os.path.isdir("/usr/share/games/fortunes"),
                    reason="espeak-ng, sox, wordnet-base, fortunes, bible-kjv (Debian) are needed")
def test_synth_prepare_sh_stage0(tmp_path):
    data = str(tmp_path / "synth")
    _run("synth/prepare.sh", "--data", data, "--n-train", "2", "--n-heldout", "1", "--n-test", "1",
         "--stop-stage", "0")
    for split, n in (("train", 2), ("heldout", 1), ("test", 1)):
        assert len(read_manifest(os.path.join(data, f"{split}.tsv"))) == n
    assert os.path.exists(os.path.join(data, ".stage0.done"))
    assert not os.path.exists(os.path.join(data, "dict.txt"))
    # the same folder asked for with other sizes (the default --n-train): one line naming the sizes, no
    # stage skipped into a corpus of other sizes
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", "synth/prepare.sh"), "--data", data,
                           "--n-heldout", "1", "--n-test", "1", "--stop-stage", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "n_train 2 (asked 5800)" in proc.stderr and "--n-train 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the training voices: made with the default (wide) set, asked for the narrow one (the corpora before
    # 2026-12-05): one line naming both, nothing run
    with open(os.path.join(data, "synth_config.json")) as f:
        assert len(json.load(f)["train_voices"]) == 204
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", "synth/prepare.sh"), "--data", data,
                           "--n-train", "2", "--n-heldout", "1", "--n-test", "1", "--voices", "narrow"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "made with --voices wide (asked --voices narrow): pass --voices wide" in proc.stderr
    # stage 4 on a folder made before the dev split (no dev.tsv, no dev settings in its config): dev is
    # synthesized (heldout's sentence, another voice) and gets its fbank store; the rest is left alone
    assert len(read_manifest(os.path.join(data, "dev.tsv"))) == 1  # stage 0 makes dev today
    config = os.path.join(data, "synth_config.json")
    with open(config) as f:
        old = json.load(f)
    with open(config, "w") as f:
        json.dump({k: v for k, v in old.items() if k not in ("n_dev", "dev_voices")}, f)
    os.remove(os.path.join(data, "dev.tsv"))
    shutil.rmtree(os.path.join(data, "wav", "dev"))
    train_wav = os.path.join(data, "wav", "train", "train_00000.wav")
    os.utime(train_wav, (1, 1))
    _run("synth/prepare.sh", "--data", data, "--n-train", "2", "--n-heldout", "1", "--n-test", "1",
         "--stage", "4")
    dev, = read_manifest(os.path.join(data, "dev.tsv"))
    held, = read_manifest(os.path.join(data, "heldout.tsv"))
    assert dev.tgt_text == held.tgt_text and dev.speaker != held.speaker
    assert os.path.exists(os.path.join(data, "dev.fbank.bin")) and os.stat(train_wav).st_mtime == 1
    assert not os.path.exists(os.path.join(data, "dict.txt"))  # stages 1-3 not run
    # units: a folder whose dictionary was made before DATA/unit existed is a wordpiece folder, one made
    # since says which; asking for other units is one line naming both, no stage run
    open(os.path.join(data, ".stage1.done"), "w").close()
    for made, asked in ((None, "word"), ("word", "wordpiece")):
        if made:
            with open(os.path.join(data, "unit"), "w") as f:
                f.write(made + "\n")
        proc = subprocess.run(["bash", os.path.join(REPO, "examples", "synth/prepare.sh"), "--data", data,
                               "--n-train", "2", "--n-heldout", "1", "--n-test", "1", "--unit", asked],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert f"prepared with --unit {made or 'wordpiece'} (asked {asked})" in proc.stderr
