"""A model trained without the CTC loss decodes with the count search scored by its decoder alone.

Its CTC head never received a gradient, so ``--cif-ctc-weight 0.7`` (the default) would let random
scores choose the count. The task records the criterion's CTC weight in the checkpoint (fairseq's
``task_state``); fairseq-generate, the transcriber and the ONNX export read it back and fall back to
weight 0 with a warning. Checkpoints saved before the record existed are read from their criterion
config (transcriber, export). Reuses ``trained_cif`` (tests/test_generate_e2e.py), trained with
``--criterion cif`` at its default CTC weight 0.5; the "no CTC" checkpoints are copies of it with the
record (or the config) set to 0, so no second training run is needed.
"""
import logging

import pytest
import torch

from test_generate_e2e import fairseq_generate, trained_cif  # noqa: F401  (shared session fixture)

pytestmark = pytest.mark.slow


def _copy(trained, tmp_path, name, edit):
    state = torch.load(trained.ckpt, map_location="cpu", weights_only=False)
    edit(state)
    path = tmp_path / name
    torch.save(state, path)
    return path


def _no_ctc_record(state):
    state["task_state"] = {"trained_ctc_weight": 0.0}


def _old_style_no_ctc(state):  # saved before 2026-12-03: no task state, the criterion config says 0
    state["task_state"] = {}
    state["cfg"]["criterion"]["ctc_weight"] = 0.0


def _generator_weight(path, data):
    from fairseq import checkpoint_utils

    import fairseq_hkd  # noqa: F401

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data)})
    from types import SimpleNamespace

    return task.build_generator(models, SimpleNamespace(beam=2)).ctc_weight


def test_checkpoint_records_the_training_ctc_weight(trained_cif):
    state = torch.load(trained_cif.ckpt, map_location="cpu", weights_only=False)
    assert state["task_state"] == {"trained_ctc_weight": 0.5, "trained_join_prob": 0.0}  # --criterion cif (CTC 0.5)
    assert _generator_weight(trained_cif.ckpt, trained_cif.data) == 0.7  # trained with CTC: the option's


def test_fairseq_generate_falls_back_to_the_decoder_score(trained_cif, tmp_path, caplog):
    path = _copy(trained_cif, tmp_path, "no_ctc.pt", _no_ctc_record)
    assert _generator_weight(path, trained_cif.data) == 0.0
    # the whole command: the copy's default decoding = the original decoded with --cif-ctc-weight 0
    no_ctc = trained_cif.__class__(**{**vars(trained_cif), "ckpt": path})
    with caplog.at_level(logging.WARNING):
        _, got = fairseq_generate(no_ctc, tmp_path, "valid")
    assert any("trained without the CTC loss" in r.getMessage() for r in caplog.records)
    _, want = fairseq_generate(trained_cif, tmp_path, "valid", "--cif-ctc-weight", "0")
    assert {i: e["H"] for i, e in got.items()} == {i: e["H"] for i, e in want.items()}
    # without the count search the weight does not matter and nothing is said
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fairseq_generate(no_ctc, tmp_path, "valid", "--cif-count-search", "0")
    assert not any("trained without the CTC loss" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("edit", [_no_ctc_record, _old_style_no_ctc], ids=["task-state", "criterion-config"])
def test_transcriber_and_export_fall_back(trained_cif, tmp_path, edit):
    from fairseq_hkd.export.onnx_export import load_checkpoint
    from fairseq_hkd.generation.transcribe import Recognizer

    path = _copy(trained_cif, tmp_path, "no_ctc.pt", edit)
    assert Recognizer.from_checkpoint(str(path), data=str(trained_cif.data), beam=2, cpu=True).generator.ctc_weight == 0
    _, task, _ = load_checkpoint(str(path), data=str(trained_cif.data))
    assert task.decoding_ctc_weight() == 0  # what the export writes to config.json's search.ctc_weight
    # the original checkpoint keeps the option's weight; an explicit weight is honoured when CTC was trained
    rec = Recognizer.from_checkpoint(str(trained_cif.ckpt), data=str(trained_cif.data), beam=2, cpu=True, ctc_weight=0.4)
    assert rec.generator.ctc_weight == 0.4
