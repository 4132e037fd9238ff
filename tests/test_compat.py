"""compat.py: checkpoints load under torch's weights_only=True default (train resume, generate), and
fairseq's batching keeps its last batch."""
import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary, data_utils
from omegaconf import OmegaConf

import fairseq_hkd  # noqa: F401  (installs the shims)
from fairseq_hkd.compat import batch_by_size_keep_remainder


def fairseq_objects():
    return {
        "namespace": argparse.Namespace(arch="x", lr=[0.001], betas=(0.9, 0.98), none=None),
        "numpy": {"loss": np.float64(1.25), "n": np.int64(3), "h": np.float32(0.5), "arr": np.arange(4.0)},
        "omegaconf": OmegaConf.create({"task": {"data": "d", "max": 3}, "lr": [0.1], "f": 1.5, "b": True}),
    }


def test_allow_list_loads_fairseq_objects_that_plain_torch_rejects(tmp_path):
    for name, obj in fairseq_objects().items():
        torch.save({"obj": obj}, tmp_path / f"{name}.pt")
    # without the shims torch's default (weights_only=True) refuses every one of them ...
    code = ("import sys, torch\nfor n in sys.argv[1:]:\n    try:\n        torch.load(n); print('loaded', n)\n"
            "    except Exception as e:\n        print('refused', n, type(e).__name__)\n")
    files = [str(tmp_path / f"{n}.pt") for n in fairseq_objects()]
    out = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120).stdout
    assert out.count("refused") == 3, out
    # ... and with them (this process imported fairseq_hkd) they load, equal to what was saved
    for name, obj in fairseq_objects().items():
        got = torch.load(tmp_path / f"{name}.pt")["obj"]
        if name == "omegaconf":
            assert OmegaConf.to_container(got) == OmegaConf.to_container(obj)
        elif name == "numpy":
            assert got["loss"] == obj["loss"] and got["n"].dtype == np.int64 and np.array_equal(got["arr"], obj["arr"])
        else:
            assert got == obj


def test_allow_list_still_rejects_arbitrary_code(tmp_path):
    torch.save({"f": subprocess.call}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(tmp_path / "evil.pt")


@pytest.mark.parametrize("n,bsz_mult", [(4, 8), (12, 8), (7, 3), (20, 8)])
def test_batch_by_size_keeps_the_remainder(n, bsz_mult):
    indices = np.random.default_rng(n).permutation(n).astype(np.int64)
    sizes = np.full(n, 100, dtype=np.int64)
    stock = data_utils.batch_by_size(indices, None, num_tokens_vec=sizes[indices], max_tokens=100 * 8,
                                     required_batch_size_multiple=bsz_mult)
    ours = batch_by_size_keep_remainder(stock, indices)
    assert np.array_equal(np.concatenate(ours), indices)  # every index once, in order
    assert len(ours) - len(stock) == (1 if sum(map(len, stock)) < n else 0)


def run(cmd, cwd, timeout=240):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


TRAIN = ["--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "4000", "--cpu", "--num-workers", "0",
         "--log-format", "simple", "--no-epoch-checkpoints"]


@pytest.mark.slow
def test_resume_from_checkpoint_with_namespace(tiny_corpus, repo_root, venv_bin, tmp_path):
    """An argparse-registered model stores its cfg as an argparse.Namespace: resuming must load it."""
    save = tmp_path / "ckpt"
    base = [str(venv_bin / "fairseq-train"), str(tiny_corpus), "--user-dir", "tests/probe_plugin", "--task",
            "cif_asr", "--arch", "hkd_probe", "--criterion", "cross_entropy", "--save-dir", str(save), *TRAIN]
    run(base + ["--max-epoch", "1"], repo_root)
    state = torch.load(save / "checkpoint_last.pt")  # weights_only default, allow-list active
    assert isinstance(state["cfg"]["model"], argparse.Namespace)
    out = run(base + ["--max-epoch", "2"], repo_root)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 2 @ 1 updates\)", out), out[-2000:]
    assert "epoch 002" in out


@pytest.mark.slow
def test_cif_checkpoint_reloads_for_generate(tiny_corpus, repo_root, venv_bin, tmp_path):
    """A cif_tiny checkpoint written by fairseq-train reloads into the same weights and decodes."""
    from fairseq import checkpoint_utils

    save = tmp_path / "ckpt"
    run([str(venv_bin / "fairseq-train"), str(tiny_corpus), "--user-dir", "fairseq_hkd", "--task", "cif_asr",
         "--arch", "cif_tiny", "--criterion", "cif", "--save-dir", str(save), "--max-epoch", "1", *TRAIN], repo_root)
    ckpt = save / "checkpoint_last.pt"
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)])
    saved = torch.load(ckpt)["model"]
    for k, v in models[0].state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert task.cfg.unit == "char" and task.target_dictionary.symbols == Dictionary.load(str(tiny_corpus / "dict.txt")).symbols
    out = run([str(venv_bin / "fairseq-generate"), str(tiny_corpus), "--user-dir", "fairseq_hkd", "--task", "cif_asr",
               "--path", str(ckpt), "--gen-subset", "valid", "--max-tokens", "4000", "--cpu", "--beam", "1",
               "--scoring", "wer"], repo_root)
    assert sorted(re.findall(r"^T-(\d+)\t", out, flags=re.M)) == ["0", "1", "2", "3"]  # all 4 valid utterances
    assert "WER:" in out
