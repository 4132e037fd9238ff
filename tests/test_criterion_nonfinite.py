"""--nonfinite-loss: a batch whose loss is NaN/inf stops training with an error naming the term and
the utterances (default), or with ``skip`` gives a zero loss whose backward leaves every parameter a
finite zero gradient, logs the utterance ids and is counted in ``nonfinite_skipped``.

The engineered batch: finite features, but one row of the decoder's output projection set to inf, so
the decoder logits (and the CE terms) are non-finite while the CIF weights stay finite."""
import logging

import pytest
import torch
from fairseq import metrics, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from corpus import setup_task


def build(tiny_corpus, *extra, criterion="cif"):
    task = setup_task(tiny_corpus, "--spec-aug-prob", "0")
    task.load_dataset("valid")
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tiny_corpus), "--task", "cif_asr", "--arch", "cif_tiny", "--criterion", criterion, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


def poison(model):
    with torch.no_grad():
        model.decoder.output_projection.weight[5].fill_(float("inf"))


def test_default_is_an_error_naming_term_and_utterances(tiny_corpus):
    from fairseq_hkd.criterions.guards import NonFiniteLossError

    task, model, criterion = build(tiny_corpus)
    assert criterion.cfg.nonfinite_loss == "error"
    ds = task.dataset("valid")
    sample = ds.collater([ds[0], ds[1]])
    _, _, log = criterion(model.train(), sample)
    assert "nonfinite_skipped" not in log
    poison(model)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss term\(s\) ce=nan.* valid0000, valid0001"):
        criterion(model, sample)


def test_skip_gives_zero_loss_zero_grads_and_counts(tiny_corpus, caplog):
    task, model, criterion = build(tiny_corpus, "--nonfinite-loss", "skip")
    ds = task.dataset("valid")
    sample = ds.collater([ds[0], ds[1]])
    model.train()
    loss, size, normal = criterion(model, sample)
    assert torch.isfinite(loss) and loss > 0 and size == sample["ntokens"] and normal["nonfinite_skipped"] == 0
    poison(model)
    with caplog.at_level(logging.WARNING):
        loss, size, skipped = criterion(model, sample)
    assert any("ce=nan" in r.message and "valid0000, valid0001" in r.message and "Batch skipped" in r.message
               for r in caplog.records)
    assert float(loss) == 0.0 and size == 0
    assert skipped.keys() == normal.keys()  # ranks all-reduce logging outputs key by key
    assert skipped["nonfinite_skipped"] == 1 and skipped["ntokens"] == 0 and skipped["loss"] == 0.0
    model.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name
    # summed over a log interval: one skipped batch of two
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics([normal, skipped])
    assert agg.get_smoothed_values()["nonfinite_skipped"] == 1


def test_cif_hkd_inherits_the_option(tiny_corpus):
    from fairseq_hkd.criterions.cif_hkd import CifHkdCriterionConfig

    assert CifHkdCriterionConfig().nonfinite_loss == "error"
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tiny_corpus), "--task", "cif_asr", "--arch", "cif_tiny", "--criterion", "cif_hkd",
        "--nonfinite-loss", "skip"])
    assert args.nonfinite_loss == "skip"
