"""``fairseq-train --store-ema``: fairseq's exponential moving average of the weights works with our
model (a real run, the tiny model of train_runs.py).

Two things stopped it before (compat.py, item 7; chunk_attention.py): the EMA deep-copies the model
after the first update, and our attention kept the last batch's softmax (a non-leaf tensor) on the
module; and it decays every state-dict entry in place, which fails on the conformer's integer
BatchNorm counter. The check is independent of fairseq's code: from the checkpoint of every update,
the stored EMA must follow ema_1 = theta_1, ema_k = d ema_(k-1) + (1 - d) theta_k, recomputed here
in float64, and integer buffers must be the model's own.
"""
import pytest
import torch

from train_runs import make_hkd_data, run, train_cmd

pytestmark = pytest.mark.slow

DECAY = 0.9


def test_store_ema_follows_the_recurrence(tmp_path, venv_bin):
    data = make_hkd_data(tmp_path)
    save = tmp_path / "ema"
    run(train_cmd(venv_bin, data, save, "--batch-size", "2", "--max-update", "3", "--save-interval-updates", "1",
                  "--store-ema", "--ema-decay", str(DECAY)))
    states = [torch.load(save / f"checkpoint_1_{k}.pt", map_location="cpu", weights_only=False) for k in (1, 2, 3)]

    expected = None
    for k, state in enumerate(states, start=1):
        model, ema = state["model"], state["extra_state"]["ema"]
        assert set(ema) == set(model)
        if expected is None:  # built from the model after the first update
            expected = {name: value.double() for name, value in model.items() if value.is_floating_point()}
        else:
            expected = {name: DECAY * expected[name] + (1 - DECAY) * model[name].double() for name in expected}
        for name, value in model.items():
            if value.is_floating_point():
                torch.testing.assert_close(ema[name].double(), expected[name], rtol=1e-6, atol=1e-7, msg=name)
            else:
                assert torch.equal(ema[name], value), name  # e.g. BatchNorm's num_batches_tracked
        counters = [name for name in model if name.endswith("num_batches_tracked")]
        assert counters and all(int(model[name]) == k for name in counters)
    # the EMA is not the model (three different updates were averaged)
    name = next(n for n, v in states[-1]["model"].items() if v.is_floating_point() and v.dim() == 2)
    assert not torch.allclose(states[-1]["extra_state"]["ema"][name], states[-1]["model"][name])


def test_average_tool_writes_the_ema_as_a_checkpoint(tmp_path, venv_bin):
    """``fairseq-hkd-average-checkpoints --ema``: one input gives its EMA weights as the model; two give
    their float64 mean; a checkpoint without EMA is a one-line error naming it."""
    import subprocess

    from train_runs import REPO, env

    data = make_hkd_data(tmp_path)
    save = tmp_path / "ema"
    run(train_cmd(venv_bin, data, save, "--batch-size", "2", "--max-update", "2", "--save-interval-updates", "1",
                  "--store-ema", "--ema-decay", str(DECAY)))
    tool = str(venv_bin / "fairseq-hkd-average-checkpoints")
    one, two = save / "checkpoint_1_1.pt", save / "checkpoint_1_2.pt"
    run([tool, "--inputs", str(two), "--ema", "--output", str(tmp_path / "ema2.pt")])
    run([tool, "--inputs", str(one), str(two), "--ema", "--output", str(tmp_path / "ema12.pt")])
    ref = [torch.load(p, map_location="cpu", weights_only=False)["extra_state"]["ema"] for p in (one, two)]
    out2 = torch.load(tmp_path / "ema2.pt", map_location="cpu", weights_only=False)
    out12 = torch.load(tmp_path / "ema12.pt", map_location="cpu", weights_only=False)
    assert "ema" not in out2["extra_state"] and out2["extra_state"]["averaged_weights"] == "ema"
    for name, value in ref[1].items():
        assert torch.equal(out2["model"][name], value), name
        if value.is_floating_point():
            mean = ((ref[0][name].double() + value.double()) / 2).to(value.dtype)
            assert torch.equal(out12["model"][name], mean), name

    plain = tmp_path / "plain"
    run(train_cmd(venv_bin, data, plain, "--batch-size", "2", "--max-update", "1"))
    proc = subprocess.run([tool, "--inputs", str(plain / "checkpoint_last.pt"), "--ema", "--output",
                           str(tmp_path / "x.pt")], cwd=REPO, env=env(), capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "checkpoint_last.pt holds no EMA weights: train with --store-ema" in proc.stderr
