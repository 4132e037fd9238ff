"""fairseq-hkd-average-checkpoints on the epoch checkpoints of the tiny training run."""
import os
import subprocess
from pathlib import Path

import pytest
import torch

from fairseq_hkd.generation.average import average_checkpoints, last_checkpoints
from test_generate_e2e import TRAIN_EPOCHS, fairseq_generate, trained_cif  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def raw_load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_last_checkpoints_selection(trained_cif, tmp_path):
    # the fixture saves every 40 epochs
    epochs = [e for e in range(40, TRAIN_EPOCHS + 1, 40)]
    paths = last_checkpoints(str(trained_cif.save_dir), 2)
    assert [os.path.basename(p) for p in paths] == [f"checkpoint{e}.pt" for e in epochs[-2:]]
    paths = last_checkpoints(str(trained_cif.save_dir), 1, upper_bound=epochs[-1] - 1)
    assert [os.path.basename(p) for p in paths] == [f"checkpoint{epochs[-2]}.pt"]
    with pytest.raises(FileNotFoundError, match=f"has {len(epochs)} files"):
        last_checkpoints(str(trained_cif.save_dir), len(epochs) + 1)


def test_cli_averages_and_decodes(trained_cif, venv_bin, tmp_path):
    out = tmp_path / "avg.pt"
    cmd = [str(venv_bin / "fairseq-hkd-average-checkpoints"), "--inputs", str(trained_cif.save_dir),
           "--num-epoch-checkpoints", "2", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (raw_load(p) for p in last_checkpoints(str(trained_cif.save_dir), 2))
    avg = raw_load(out)
    assert avg["model"].keys() == b["model"].keys()
    n_float = 0
    for k, v in avg["model"].items():
        assert v.dtype == b["model"][k].dtype
        if v.is_floating_point():
            ref = (a["model"][k].double() + b["model"][k].double()) / 2
            torch.testing.assert_close(v.double(), ref, atol=1e-6, rtol=1e-6)
            n_float += 1
        else:
            assert torch.equal(v, b["model"][k])
    assert n_float > 10
    assert avg["last_optimizer_state"] is None
    assert avg["extra_state"]["averaged_from"] == [f"checkpoint{e}.pt" for e in (TRAIN_EPOCHS - 40, TRAIN_EPOCHS)]

    # the averaged model decodes with the stock fairseq-generate
    trained_avg = type(trained_cif)(data=trained_cif.data, save_dir=tmp_path, ckpt=out)
    text, parsed = fairseq_generate(trained_avg, tmp_path, "test", "--beam", "2")
    assert len(parsed) == 4 and "WER:" in text


def test_average_of_one_is_identity(trained_cif):
    path = last_checkpoints(str(trained_cif.save_dir), 1)[0]
    avg = average_checkpoints([path])
    ref = raw_load(path)
    for k, v in avg["model"].items():
        assert torch.equal(v, ref["model"][k])


def test_mismatched_models_rejected(trained_cif, tmp_path):
    path = last_checkpoints(str(trained_cif.save_dir), 1)[0]
    state = raw_load(path)
    state["model"].pop(next(iter(state["model"])))
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(ValueError, match="different parameters"):
        average_checkpoints([path, str(other)])
