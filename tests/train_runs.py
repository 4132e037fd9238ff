"""Helpers for the tests that run ``fairseq-train`` as subprocesses (test_distributed, test_resume):
a tiny corpus with a teacher store, the shared command line, fairseq's JSON log, free TCP ports,
and the exact (unrounded) loss of a checkpoint.

The model is ``cif_tiny`` shrunk further (2 encoder layers, 1 decoder layer) with every dropout off,
so two runs that see the same batches in the same order compute the same numbers; SpecAugment stays
on: the task's train_step seeds its masks per (seed, update number, utterance index), which does not
depend on the process or on where a run was resumed.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = ("--arch", "cif_tiny", "--encoder-layers", "2", "--decoder-layers", "1",
              "--dropout", "0", "--cif-dropout", "0", "--decoder-dropout", "0")
# every other target position is a negative (K = N - 1 for batches of < 100 tokens), so the ACD term
# does not depend on the random draw, which differs between one process and two
HKD = ("--criterion", "cif_hkd", "--load-teacher", "yes", "--acd-negatives", "700",
       "--acd-small-batch-ratio", "0.99", "--acd-weight", "1.0", "--lrd-weight", "0.01")


def make_hkd_data(root: Path, n_train: int = 8, n_valid: int = 4) -> Path:
    """Tiny char-unit corpus plus train/valid teacher stores from a tiny random BERT."""
    from corpus import make_tiny_corpus
    from teacher_fixtures import make_tiny_plm

    from fairseq_hkd.teacher.extract import extract_teacher

    data = make_tiny_corpus(root / "data", n_train=n_train, n_valid=n_valid)
    plm = make_tiny_plm(root / "plm")
    for split in ("train", "valid"):
        extract_teacher(str(data / f"{split}.tsv"), plm, "char", dtype="float32", progress=False)
    return data


def train_cmd(venv_bin: Path, data: Path, save_dir: Path, *extra: str) -> List[str]:
    """fairseq-train with the tiny model, cif_hkd, JSON log every update, Adam, no epoch checkpoints."""
    return [str(venv_bin / "fairseq-train"), str(data), "--user-dir", "fairseq_hkd", "--task", "cif_asr",
            *TINY_MODEL, *HKD, "--optimizer", "adam", "--lr", "1e-3", "--clip-norm", "1.0",
            "--save-dir", str(save_dir), "--cpu", "--num-workers", "0", "--seed", "3", "--log-interval", "1",
            "--no-progress-bar", "--log-format", "json", "--no-epoch-checkpoints", *map(str, extra)]


def env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def run(cmd: Sequence[str], timeout: float = 300) -> str:
    proc = subprocess.run(list(cmd), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def json_records(log: str, kind: str) -> List[dict]:
    """fairseq's ``--log-format json`` lines of one kind (``train_inner``, ``train``, ``valid``)."""
    out = []
    for line in log.splitlines():
        m = re.search(r"\| " + kind + r" \| (\{.*\})\s*$", line)
        if m:
            out.append(json.loads(m.group(1)))
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_params(path: Path) -> Dict[str, torch.Tensor]:
    """Model and criterion parameters of a checkpoint, prefixed ``model.`` / ``criterion.``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"criterion.{k}": v for k, v in (state.get("criterion") or {}).items()})
    return out


def build_task_model_criterion(data: Path, *extra: str):
    """(task, model, criterion) built as fairseq-train would with the tiny model and cif_hkd."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_hkd  # noqa: F401

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--task", "cif_asr", *TINY_MODEL, *HKD, "--spec-aug-prob", "0", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def exact_loss(data: Path, checkpoint: Path, split: str = "valid") -> float:
    """cif_hkd loss per target token (nats) of a checkpoint's parameters on a split, one utterance
    per batch, summed in float64 in this process (fairseq's log rounds to 3 decimals).

    The model runs in training mode (dropout is 0): batch norm then normalises with the batch's own
    statistics, so the value depends on the trained parameters only, not on the running statistics,
    which each data-parallel process keeps for itself (see docs/TRAINING.md).
    """
    task, model, criterion = build_task_model_criterion(data)
    task.load_dataset(split)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    criterion.load_state_dict(state["criterion"])
    model.train()
    ds = task.dataset(split)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            loss, sample_size, _ = criterion(model, ds.collater([ds[i]]))
            total += float(loss)
            tokens += int(sample_size)
    return total / tokens
