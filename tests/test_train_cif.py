"""fairseq-train with the cif_tiny model and the cif criterion on the tiny synthesized corpus:
saving, resuming from checkpoint_last.pt, the loss going down, and overfitting a few utterances
until the teacher-forced token error is (near) zero."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

LOG_LINE = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")


def fairseq_train(venv_bin: Path, repo_root: Path, data: Path, save_dir: Path, *extra: str, timeout: int = 180):
    """Run fairseq-train; -> (records [(tag, dict)], full output). Fails the test with the log tail."""
    cmd = [
        str(venv_bin / "fairseq-train"), str(data), "--user-dir", str(repo_root / "fairseq_hkd"),
        "--task", "cif_asr", "--arch", "cif_tiny", "--criterion", "cif", "--cpu", "--num-workers", "0",
        "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--clip-norm", "1.0", "--max-tokens", "4000", "--spec-aug-prob", "0", "--seed", "1",
        "--save-dir", str(save_dir), "--log-format", "json", "--log-interval", "1", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    records = []
    for line in out.splitlines():
        m = LOG_LINE.search(line)
        if m:
            records.append((m.group(1), {k: _num(v) for k, v in json.loads(m.group(2)).items()}))
    return records, out


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _epoch_stats(records, tag="train"):
    return [r for t, r in records if t == tag]


def test_fairseq_train_saves_resumes_and_the_loss_goes_down(tiny_corpus, tmp_path, venv_bin, repo_root):
    save = tmp_path / "ckpt"
    common = ("--batch-size", "4")  # 8 utterances: 2 updates per epoch
    records, _ = fairseq_train(venv_bin, repo_root, tiny_corpus, save, *common, "--max-epoch", "3")
    first = _epoch_stats(records)
    assert [int(r["epoch"]) for r in first] == [1, 2, 3]
    assert (save / "checkpoint_last.pt").is_file() and (save / "checkpoint3.pt").is_file()
    valid = _epoch_stats(records, "valid")
    assert {"valid_ctc_loss", "valid_quantity_loss", "valid_fire_acc", "valid_tf_ter"} <= set(valid[-1])

    records, out = fairseq_train(venv_bin, repo_root, tiny_corpus, save, *common, "--max-epoch", "5")
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 4 @ 6 updates\)", out), out[-3000:]
    resumed = _epoch_stats(records)
    assert [int(r["epoch"]) for r in resumed] == [4, 5]
    assert int(resumed[-1]["train_num_updates"]) == 10
    assert resumed[-1]["train_loss"] < 0.8 * first[0]["train_loss"], (first, resumed)

    # the saved model loads back through fairseq (torch's weights_only loading included)
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(save / "checkpoint_last.pt")])
    assert cfg.model._name == "cif_tiny" and type(models[0]).__name__ == "CifModel"


def test_overfitting_a_few_utterances_drives_teacher_forced_errors_to_zero(tiny_corpus, tmp_path, venv_bin, repo_root):
    """Validate on the training utterances themselves: a working model/criterion memorises them."""
    data = tmp_path / "overfit"
    data.mkdir()
    for name in ("wav", "dict.txt", "train.tsv"):
        (data / name).symlink_to(tiny_corpus / name)
    (data / "valid.tsv").symlink_to(tiny_corpus / "train.tsv")
    records, _ = fairseq_train(
        venv_bin, repo_root, data, tmp_path / "ckpt", "--max-update", "50", "--validate-interval", "1000",
        "--no-save", "--dropout", "0", "--decoder-dropout", "0", "--cif-dropout", "0")
    train = _epoch_stats(records)
    final = _epoch_stats(records, "valid")[-1]
    assert final["valid_num_updates"] == 50
    assert final["valid_tf_ter"] <= 2.0, final
    assert train[-1]["train_loss"] < 0.3 * train[0]["train_loss"], (train[0], train[-1])
