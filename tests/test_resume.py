"""Exact resume: a ``fairseq-train`` run killed with SIGKILL in the middle of an epoch and restarted
from its ``checkpoint_last.pt`` ends exactly where an uninterrupted run with the same seed ends.

Everything random is on (cif_hkd with randomly drawn ACD negatives, dropout 0.1, SpecAugment), since
fairseq re-seeds torch with (seed + update number) before every update, restores the epoch
iterator's position and re-shuffles with (seed, epoch), and the task seeds SpecAugment per
(seed, update number, utterance index). 8 utterances, batch size 2: 4 updates per epoch; a checkpoint every
2 updates; the run is killed as soon as the update-2 checkpoint is saved (mid-epoch 1) and resumed
to update 6 (through the epoch boundary).

Tolerance: none needed in principle, the same operations run in the same order on the same inputs;
we allow 1e-6 (absolute, parameters; relative, losses) so that a harmless change of summation order
in a library would not fail the test. Measured: 0.
"""
import os
import re
import signal
import subprocess
import time

import pytest
import torch

from train_runs import REPO, checkpoint_params, env, exact_loss, json_records, make_hkd_data, run, train_cmd

pytestmark = pytest.mark.slow

RANDOM = ("--dropout", "0.1", "--cif-dropout", "0.1", "--decoder-dropout", "0.1", "--acd-small-batch-ratio", "0.8",
          "--batch-size", "2", "--save-interval-updates", "2", "--max-update", "6")
TOL = 1e-6


def _train_until_checkpoint(cmd, save_dir, updates: int, timeout: float = 300) -> None:
    """Start training; SIGKILL it right after the checkpoint of ``updates`` updates is saved."""
    with open(save_dir.parent / "killed.log", "w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        needle = f"@ {updates} updates"
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and proc.poll() is None:
                log.seek(0)
                if any("Saved checkpoint" in line and needle in line for line in log):
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "training ended before it could be killed:\n" + open(log.name).read()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, venv_bin):
    data = make_hkd_data(tmp_path)
    full_log = run(train_cmd(venv_bin, data, tmp_path / "full", *RANDOM))

    resumed_dir = tmp_path / "resumed"
    cmd = train_cmd(venv_bin, data, resumed_dir, *RANDOM)
    _train_until_checkpoint(cmd, resumed_dir, updates=2)
    state = torch.load(resumed_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    it = state["extra_state"]["train_iterator"]
    assert (it["epoch"], it["iterations_in_epoch"], state["optimizer_history"][-1]["num_updates"]) == (1, 2, 2), it
    resumed_log = run(cmd)
    assert re.search(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch 1 @ 2 updates\)", resumed_log), resumed_log[-2000:]

    # the updates after the restart log the same losses as the uninterrupted run's
    full_inner = {r["num_updates"]: r for r in json_records(full_log, "train_inner")}
    res_inner = {r["num_updates"]: r for r in json_records(resumed_log, "train_inner")}
    assert sorted(res_inner) == ["3", "4", "5", "6"] and sorted(full_inner) == [str(i) for i in range(1, 7)], res_inner
    for k, r in res_inner.items():
        for key in ("loss", "acd_loss", "lrd_loss", "wpb"):
            assert r[key] == full_inner[k][key], (k, key, r, full_inner[k])
    # the same final validation loss (fairseq's rounded log and the exact value) and parameters
    v_full, v_res = json_records(full_log, "valid")[-1], json_records(resumed_log, "valid")[-1]
    assert v_full["valid_num_updates"] == v_res["valid_num_updates"] == "6"
    assert v_full["valid_loss"] == v_res["valid_loss"], (v_full, v_res)
    p1 = checkpoint_params(tmp_path / "full" / "checkpoint_last.pt")
    p2 = checkpoint_params(resumed_dir / "checkpoint_last.pt")
    assert p1.keys() == p2.keys()
    worst = max((p1[k].double() - p2[k].double()).abs().max().item() for k in p1)  # batch-norm statistics too
    assert worst <= TOL, worst
    l1 = exact_loss(data, tmp_path / "full" / "checkpoint_last.pt")
    l2 = exact_loss(data, resumed_dir / "checkpoint_last.pt")
    assert abs(l1 - l2) <= TOL * abs(l1), (l1, l2)
