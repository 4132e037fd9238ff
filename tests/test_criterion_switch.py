"""Switching criterion between runs: ``cif_hkd`` starts from a ``cif`` checkpoint (distilling into a
trained baseline) and ``cif`` from a ``cif_hkd`` one, with ``--finetune-from-model`` and with
``--restore-file`` + ``--reset-*``: real ``fairseq-train`` runs of one update each.

fairseq's Trainer loads the criterion state strictly, and a ``cif`` checkpoint has none (None); the
criterion's ``load_state_dict`` starts missing projections from their fresh initialisation and drops
extra ones, logging either. Loading the model is checked against the checkpoint with a bound derived
from Adam: its first update moves every parameter by lr * m_hat / (sqrt(v_hat) + eps), at most lr
(1e-3) per element, while a model that was not loaded differs by the scale of a random
initialisation (~0.1).
"""
import logging
import re

import pytest
import torch

from train_runs import TINY_MODEL, make_hkd_data

pytestmark = pytest.mark.slow
LR = 1e-3
HKD = ("--criterion", "cif_hkd", "--load-teacher", "yes", "--acd-weight", "1.0", "--lrd-weight", "0.01")
CIF = ("--criterion", "cif")
RESETS = ("--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader", "--reset-meters")


def _train(data, save_dir, *extra):
    """fairseq-train in this process: the tiny model, one update, no SpecAugment."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli.train import main

    argv = [str(data), "--task", "cif_asr", *TINY_MODEL, "--spec-aug-prob", "0", "--optimizer", "adam",
            "--lr", str(LR), "--batch-size", "4", "--max-update", "1", "--save-dir", str(save_dir), "--cpu",
            "--num-workers", "0", "--seed", "2", "--no-progress-bar", "--no-epoch-checkpoints", *map(str, extra)]
    main(convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv)))
    return torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The corpus (with teacher stores) and a one-update checkpoint of each criterion."""
    root = tmp_path_factory.mktemp("switch")
    data = make_hkd_data(root)
    return data, {"cif": _train(data, root / "cif", *CIF), "cif_hkd": _train(data, root / "cif_hkd", *HKD)}, root


def _weights(model_state):
    return {k: v for k, v in model_state.items() if v.is_floating_point() and "running_" not in k}


def _assert_loaded_then_one_adam_step(new_model, old_model):
    new, old = _weights(new_model), _weights(old_model)
    assert new.keys() == old.keys()
    worst = max(float((new[k] - old[k]).abs().max()) for k in new)
    assert 0 < worst <= LR * (1 + 1e-3), worst


START = {"finetune": lambda ckpt: ("--finetune-from-model", ckpt), "restore": lambda ckpt: ("--restore-file", ckpt, *RESETS)}


@pytest.mark.parametrize("start", sorted(START))
def test_cif_hkd_from_a_cif_checkpoint(runs, tmp_path, caplog, start):
    data, ckpts, root = runs
    assert ckpts["cif"]["criterion"] is None  # what fairseq saves for a criterion without parameters
    caplog.set_level(logging.INFO)
    state = _train(data, tmp_path / "hkd", *HKD, *START[start](root / "cif" / "checkpoint_last.pt"))
    assert re.search(r"Loaded checkpoint \S+/cif/checkpoint_last\.pt", caplog.text), caplog.text[-3000:]
    assert re.search(r"criterion cif_hkd: the checkpoint has no acd_proj, lrd_proj .*fresh initialisation",
                     caplog.text), caplog.text[-3000:]
    _assert_loaded_then_one_adam_step(state["model"], ckpts["cif"]["model"])
    assert state["criterion"]["acd_proj.weight"].shape == (16, 144)  # trained and saved
    assert state["criterion"]["lrd_proj.weight"].shape == (16, 144)
    assert state["optimizer_history"][-1]["num_updates"] == 1


@pytest.mark.parametrize("start", sorted(START))
def test_cif_from_a_cif_hkd_checkpoint(runs, tmp_path, caplog, start):
    data, ckpts, root = runs
    assert set(ckpts["cif_hkd"]["criterion"]) == {"acd_proj.weight", "acd_proj.bias", "lrd_proj.weight", "lrd_proj.bias"}
    caplog.set_level(logging.INFO)
    state = _train(data, tmp_path / "cif", *CIF, *START[start](root / "cif_hkd" / "checkpoint_last.pt"))
    assert re.search(r"criterion cif: dropping the checkpoint's acd_proj, lrd_proj", caplog.text), caplog.text[-3000:]
    _assert_loaded_then_one_adam_step(state["model"], ckpts["cif_hkd"]["model"])
    assert state["criterion"] is None


def test_restore_without_reset_optimizer_names_the_option(runs, tmp_path):
    data, _, root = runs
    with pytest.raises(AssertionError, match=r"Criterion does not match; please reset the optimizer \(--reset-optimizer\)"):
        _train(data, tmp_path / "hkd", *HKD, "--restore-file", root / "cif" / "checkpoint_last.pt")


def test_load_state_dict_rules():
    """Unit level: missing projections keep their values, extra ones are dropped, anything else
    (a partial or misshapen projection, an unknown key) is still an error."""
    from test_hkd_criterion import _crit
    from test_model_cif import small_model

    model = small_model()
    hkd = _crit(model, acd_weight=1.0, lrd_weight=0.01)
    fresh = {k: v.clone() for k, v in hkd.state_dict().items()}
    hkd.load_state_dict(None)  # a cif checkpoint
    assert all(torch.equal(hkd.state_dict()[k], v) for k, v in fresh.items())
    saved = {k: torch.full_like(v, 0.5) for k, v in fresh.items()}
    acd_only = _crit(model, acd_weight=1.0, lrd_weight=0.0)
    acd_only.load_state_dict(saved)  # lrd_proj dropped
    assert torch.equal(acd_only.acd_proj.weight, saved["acd_proj.weight"])
    hkd.load_state_dict({k: v for k, v in saved.items() if k.startswith("acd_proj")})  # lrd_proj stays fresh
    assert torch.equal(hkd.acd_proj.bias, saved["acd_proj.bias"]) and torch.equal(hkd.lrd_proj.bias, fresh["lrd_proj.bias"])
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*acd_proj\.bias"):
        hkd.load_state_dict({"acd_proj.weight": saved["acd_proj.weight"]})
    with pytest.raises(RuntimeError, match=r"size mismatch for acd_proj\.weight"):
        hkd.load_state_dict({**saved, "acd_proj.weight": torch.zeros(3, 16)})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*other\.weight"):
        hkd.load_state_dict({**saved, "other.weight": torch.zeros(1)})
