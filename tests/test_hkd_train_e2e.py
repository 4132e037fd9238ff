"""``fairseq-train --criterion cif_hkd`` end to end on a tiny synthesized corpus with a teacher store
from a tiny random BERT (char units, mean-pooled word pieces); then resume (the criterion's
projections are checkpointed) and fairseq-generate (which never needs them)."""
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fairseq_hkd.teacher.extract import extract_teacher
from teacher_fixtures import make_tiny_plm

pytestmark = pytest.mark.slow
USER_DIR = str(Path(__file__).resolve().parents[1] / "fairseq_hkd")


def _train(argv):
    """fairseq-train in this process (saves ~10 s of interpreter start-up per run)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli.train import main

    parser = options.get_training_parser()
    main(convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, [str(a) for a in argv])))


def _generate(argv):
    from fairseq import options
    from fairseq_cli.generate import main

    parser = options.get_generation_parser()
    main(options.parse_args_and_arch(parser, [str(a) for a in argv]))


@pytest.fixture(scope="module")
def hkd_data(tmp_path_factory):
    """Tiny corpus (char units) with train/valid teacher stores from a tiny random BERT."""
    from corpus import make_tiny_corpus

    root = tmp_path_factory.mktemp("hkd")
    data = make_tiny_corpus(root / "data", n_train=4, n_valid=2)
    plm = make_tiny_plm(root / "plm")
    for split in ("train", "valid"):
        extract_teacher(str(data / f"{split}.tsv"), plm, "char", dtype="float16", progress=False)
    return data


def _train_args(data, save):
    return [
        data, "--user-dir", USER_DIR, "--task", "cif_asr", "--load-teacher", "yes",
        "--arch", "cif_tiny", "--criterion", "cif_hkd", "--acd-negatives", "700", "--lrd-weight", "0.01",
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "20000", "--spec-aug-prob", "0",
        "--save-dir", save, "--cpu", "--num-workers", "0", "--seed", "1", "--log-interval", "1",
        "--no-progress-bar", "--log-format", "simple", "--no-epoch-checkpoints",
    ]


def test_fairseq_train_cif_hkd_resume_and_generate(hkd_data, tmp_path, caplog):
    data = hkd_data
    save = tmp_path / "ckpt"
    caplog.set_level(logging.INFO)
    train = _train_args(data, save)
    _train(train + ["--max-update", "1"])
    log = caplog.text
    assert re.search(r"acd_loss [\d.]+ .*lrd_loss [\d.]+", log), log[-2000:]
    assert re.search(r"valid .*acd_acc [\d.]+", log), log[-2000:]
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    crit = state["criterion"]
    assert crit["acd_proj.weight"].shape == (16, 144) and crit["lrd_proj.weight"].shape == (16, 144)
    assert not any(k.startswith(("acd_proj", "lrd_proj")) for k in state["model"])
    # resume: the criterion's projections and their optimizer state come back from the checkpoint
    caplog.clear()
    _train(train + ["--max-update", "2"])
    log = caplog.text
    assert re.search(r"Loaded checkpoint .*\(epoch \d+ @ 1 updates\)", log), log[-2000:]
    assert re.search(r"num_updates 2", log), log[-2000:]
    resumed = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)["criterion"]
    assert not torch.equal(resumed["acd_proj.weight"], crit["acd_proj.weight"])  # trained further
    # generation loads the model alone
    _generate([data, "--results-path", tmp_path / "gen", "--user-dir", USER_DIR, "--task", "cif_asr",
                "--path", save / "checkpoint_last.pt", "--gen-subset", "valid", "--cpu", "--num-workers", "0",
                "--batch-size", "2", "--load-teacher", "no"])
    out = (tmp_path / "gen" / "generate-valid.txt").read_text()
    assert len(re.findall(r"^H-\d+\t", out, re.M)) == 2, out
    # so do the analysis scripts, on a split that has no teacher store (the HKD checkpoint's task
    # was trained with --load-teacher yes)
    bare = tmp_path / "bare"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("*.teacher.*"))
    script = Path(__file__).resolve().parents[1] / "scripts" / "fire_count_calibration.py"
    run = subprocess.run([sys.executable, str(script), "--path", str(save / "checkpoint_last.pt"), "--data", str(bare),
                          "--splits", "valid", "--scales", "1.0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^valid\tscale 1.00\tfire-count accuracy (0.0|50.0|100.0) %", run.stdout, re.M), run.stdout


def test_fairseq_train_stops_on_a_stale_teacher_store(hkd_data, tmp_path):
    """A transcript edited after extraction: loading the split names the utterance and the fix."""
    data = tmp_path / "data"
    shutil.copytree(hkd_data, data)
    lines = (data / "valid.tsv").read_text().splitlines()
    fields = lines[2].split("\t")
    fields[3] += " cat"
    lines[2] = "\t".join(fields)
    (data / "valid.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"utterance '{fields[0]}' .*teacher store has \d+ states but the target "
                                         rf"has \d+ tokens.*fairseq-hkd-extract-teacher"):
        _train(_train_args(data, tmp_path / "ckpt") + ["--max-update", "1"])


def test_task_batches_carry_wordpiece_teacher_states(tmp_path):
    """wordpiece units end to end: build-dict + extract with the PLM, the task (its own Units from
    --tokenizer-dir) accepts the store, and each batch row i holds the PLM state of token i + 1."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from corpus import make_tiny_corpus
    from fairseq_hkd.teacher.build_dict import build_dict
    from test_teacher_extract import _direct_states

    plm = make_tiny_plm(tmp_path / "plm")
    data = make_tiny_corpus(tmp_path / "data", n_train=3, n_valid=1, unit="wordpiece", tokenizer_dir=plm,
                            synth="tones")
    build_dict([str(data / "train.tsv"), str(data / "valid.tsv")], "wordpiece", plm_dir=plm,
               out=str(data / "dict.txt"), progress=False)
    extract_teacher(str(data / "train.tsv"), plm, "wordpiece", dtype="float32", progress=False)
    argv = [str(data), "--user-dir", USER_DIR, "--task", "cif_asr", "--unit", "wordpiece",
            "--tokenizer-dir", plm, "--load-teacher", "yes", "--arch", "cif_tiny", "--criterion", "cif_hkd"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    assert task.teacher_dim == 16 and batch["teacher_states"].shape[:2] == batch["target"].shape
    texts = {e.id: e.tgt_text for e in ds.entries}
    for b, utt in enumerate(batch["utt_id"]):
        ref, toks = _direct_states(plm, texts[utt])
        S = int(batch["target_lengths"][b])
        assert [task.target_dictionary[i] for i in batch["target"][b, : S - 1]] == toks[1:-1]
        torch.testing.assert_close(batch["teacher_states"][b, :S].double(), torch.from_numpy(ref[1:]), atol=1e-5, rtol=0)
        assert (batch["teacher_states"][b, S:] == 0).all()
    with pytest.raises(FileNotFoundError, match="no teacher store for split 'valid'"):
        task.load_dataset("valid")


def test_word_units_train_and_decode(tmp_path):
    """word units end to end: build-dict + extract, the task's batch row i holds the mean of the PLM
    states of word i's WordPieces (from a direct PLM run), then fairseq-train (cif_hkd) and
    fairseq-generate, whose hypotheses and references are words of dict.txt."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from corpus import make_tiny_corpus
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.teacher.build_dict import build_dict
    from test_teacher_extract import _direct_states

    plm = make_tiny_plm(tmp_path / "plm")
    data = make_tiny_corpus(tmp_path / "data", n_train=3, n_valid=2, unit="word", tokenizer_dir=plm, synth="tones",
                            words=("the", "cats", "playing", "dog", "hat"))
    build_dict([str(data / "train.tsv"), str(data / "valid.tsv")], "word", plm_dir=plm, out=str(data / "dict.txt"),
               progress=False)
    for split in ("train", "valid"):
        extract_teacher(str(data / f"{split}.tsv"), plm, "word", dtype="float32", progress=False)
    unit_args = ["--unit", "word", "--tokenizer-dir", plm]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", USER_DIR, "--task", "cif_asr", *unit_args, "--load-teacher", "yes",
        "--arch", "cif_tiny", "--criterion", "cif_hkd"]))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    ds = task.dataset("train")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    texts = {e.id: e.tgt_text for e in ds.entries}
    pooled = 0
    for b, utt in enumerate(batch["utt_id"]):
        ref, toks = _direct_states(plm, texts[utt])
        groups = []  # PLM positions (1..L) of each word's pieces
        for k, tok in enumerate(toks[1:-1], start=1):
            if tok.startswith("##"):
                groups[-1].append(k)
            else:
                groups.append([k])
        pooled += sum(len(g) > 1 for g in groups)
        S = int(batch["target_lengths"][b])
        assert [task.target_dictionary[i] for i in batch["target"][b, : S - 1]] == texts[utt].split()
        expected = torch.from_numpy(np.stack([ref[g].mean(0) for g in groups] + [ref[-1]]))
        torch.testing.assert_close(batch["teacher_states"][b, :S].double(), expected, atol=1e-5, rtol=0)
    assert pooled > 0  # some word had several pieces
    save = tmp_path / "ckpt"
    _train(_train_args(data, save) + unit_args + ["--max-update", "2"])
    _generate([data, "--results-path", tmp_path / "gen", "--user-dir", USER_DIR, "--task", "cif_asr", *unit_args,
               "--path", save / "checkpoint_last.pt", "--gen-subset", "valid", "--cpu", "--num-workers", "0",
               "--batch-size", "2", "--load-teacher", "no", "--scoring", "wer"])
    out = (tmp_path / "gen" / "generate-valid.txt").read_text()
    words = {line.split()[0] for line in (data / "dict.txt").read_text().splitlines()}
    refs = re.findall(r"^T-\d+\t(.*)$", out, re.M)
    assert sorted(refs) == sorted(e.tgt_text for e in read_manifest(data / "valid.tsv"))  # scored as words
    for hyp in re.findall(r"^H-\d+\t\S+\t(.*)$", out, re.M):
        assert set(hyp.split()) <= words
