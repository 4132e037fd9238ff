"""The ``cif_hkd`` criterion on a small CIF model: equals ``cif`` with both weights 0, adds exactly
acd_weight * ACD + lrd_weight * LRD (recomputed independently), projections only when used,
teacher states get no gradient, clear errors without a teacher."""
import math

import pytest
import torch
from fairseq import metrics

from fairseq_hkd.criterions import losses
from fairseq_hkd.criterions.cif import CifCriterion, CifCriterionConfig
from fairseq_hkd.criterions.cif_hkd import CifHkdCriterion, CifHkdCriterionConfig

from test_criterion_cif import _sample
from test_hkd_losses import acd_reference
from test_model_cif import small_model

TEACHER_DIM = 12


class _Task:
    def __init__(self, dictionary, teacher_dim=TEACHER_DIM, student_dims=None):
        self.target_dictionary = dictionary
        self.teacher_dim = teacher_dim
        self.student_dims = student_dims or {"cif": 16, "decoder": 16}


def _hkd_sample(model, seed=0):
    sample = _sample(model)
    g = torch.Generator().manual_seed(seed)
    B, S = sample["target"].shape
    teacher = torch.randn(B, S, TEACHER_DIM, generator=g)
    teacher[sample["target"].eq(1)] = 0.0  # padding rows are 0, as the collater writes them
    sample["teacher_states"] = teacher
    return sample


def _crit(model, cls=CifHkdCriterion, task=None, **kw):
    cfg_cls = CifHkdCriterionConfig if cls is CifHkdCriterion else CifCriterionConfig
    torch.manual_seed(123)  # projections' init
    return cls(cfg_cls(sentence_avg=False, **kw), task or _Task(model.decoder.dictionary))


def test_zero_weights_equal_cif_exactly():
    model = small_model()  # training mode: dropout on, so both forwards must use the same seed
    sample = _hkd_sample(model)
    hkd, cif = _crit(model, acd_weight=0.0, lrd_weight=0.0), _crit(model, CifCriterion)
    assert list(hkd.parameters()) == []  # no projections, nothing for DDP to find unused
    torch.manual_seed(7)
    loss_hkd, size_hkd, log_hkd = hkd(model, sample)
    torch.manual_seed(7)
    loss_cif, size_cif, log_cif = cif(model, sample)
    assert torch.equal(loss_hkd, loss_cif) and size_hkd == size_cif
    assert log_hkd == log_cif


@pytest.mark.parametrize("mask_same", [False, True])
def test_loss_adds_exactly_the_weighted_acd_and_lrd(monkeypatch, mask_same):
    model = small_model().eval()
    sample = _hkd_sample(model)
    crit = _crit(model, acd_weight=0.7, lrd_weight=0.05, acd_negatives=5, acd_temperature=0.1,
                 acd_mask_same_token=mask_same)
    N = int(sample["ntokens"])  # 19 > K = 5
    negatives = losses.sample_negatives(N, 5, generator=torch.Generator().manual_seed(5))
    drawn = []

    def fixed(n, k, device=None, generator=None):
        drawn.append((n, k))
        return negatives

    monkeypatch.setattr(losses, "sample_negatives", fixed)
    loss, _, log = crit(model, sample)
    assert drawn == [(N, 5)]
    base, _, _ = _crit(model, CifCriterion)(model, sample)
    # independent recomputation: the model's outputs, the criterion's projections, float64 loops
    out = model(**sample["net_input"], target_lengths=sample["target_lengths"])
    keep = sample["target"].ne(1)
    e = sample["teacher_states"][keep].double()
    z = torch.nn.functional.linear(out["cif"].embeddings[keep].double(), crit.acd_proj.weight.double(),
                                   crit.acd_proj.bias.double())
    u = torch.nn.functional.linear(out["decoder_states"][keep].double(), crit.lrd_proj.weight.double(),
                                   crit.lrd_proj.bias.double())
    tokens = sample["target"][keep] if mask_same else None
    acd, correct = acd_reference(z.tolist(), e.tolist(), negatives.tolist(), 0.1, tokens)
    lrd = float(((u - e) ** 2).sum())
    assert log["acd_loss"] == pytest.approx(acd, rel=1e-4)
    assert log["lrd_loss"] == pytest.approx(lrd, rel=1e-4)
    assert (log["acd_correct"], log["acd_total"]) == (correct, N)
    assert loss.item() == pytest.approx(base.item() + 0.7 * acd + 0.05 * lrd, rel=1e-5)


def test_gradients_reach_projections_and_model_but_not_the_teacher():
    model = small_model()
    sample = _hkd_sample(model)
    sample["teacher_states"].requires_grad_(True)
    crit = _crit(model)  # paper defaults: K = 700 > 19 tokens -> floor(0.8 * 19) = 15 negatives
    loss, _, log = crit(model, sample)
    loss.backward()
    assert sample["teacher_states"].grad is None
    names = [n for n, _ in crit.named_parameters()]
    assert sorted(names) == ["acd_proj.bias", "acd_proj.weight", "lrd_proj.bias", "lrd_proj.weight"]
    for n, p in list(crit.named_parameters()) + list(model.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert crit.acd_proj.weight.shape == (TEACHER_DIM, 16)


def test_only_the_used_projection_exists():
    model = small_model()
    only_lrd = _crit(model, acd_weight=0.0)
    assert only_lrd.acd_proj is None and only_lrd.lrd_proj is not None
    _, _, log = only_lrd(model, _hkd_sample(model))
    assert "acd_loss" not in log and "lrd_loss" in log
    only_acd = _crit(model, lrd_weight=0.0, lrd_reduction="mean")
    assert only_acd.lrd_proj is None and only_acd.acd_proj is not None
    _, _, log = only_acd(model, _hkd_sample(model))
    assert "lrd_loss" not in log and "acd_loss" in log


def test_lrd_mean_reduction():
    model = small_model().eval()
    sample = _hkd_sample(model)
    _, _, log_sum = _crit(model, acd_weight=0.0)(model, sample)
    _, _, log_mean = _crit(model, acd_weight=0.0, lrd_reduction="mean")(model, sample)
    assert log_mean["lrd_loss"] == pytest.approx(log_sum["lrd_loss"] / TEACHER_DIM, rel=1e-5)


def test_missing_teacher_errors():
    model = small_model()
    d = model.decoder.dictionary
    with pytest.raises(ValueError, match="no teacher store.*fairseq-hkd-extract-teacher"):
        _crit(model, task=_Task(d, teacher_dim=None))
    _crit(model, task=_Task(d, teacher_dim=None), acd_weight=0.0, lrd_weight=0.0)  # = cif: fine
    crit = _crit(model)
    sample = _sample(model)  # no teacher_states
    with pytest.raises(ValueError, match="no teacher states"):
        crit(model, sample)
    model.eval()  # a validation split without a store: CIF terms only
    _, _, log = crit(model, sample)
    assert "acd_loss" not in log and "ce_loss" in log


def test_reduce_metrics_logs_acd_accuracy():
    logs = [{"loss": 1.0, "nll_loss": 1.0, "acd_loss": 2.0, "lrd_loss": 30.0, "acd_correct": 3, "acd_total": 4,
             "ntokens": 4, "nsentences": 1, "sample_size": 4},
            {"loss": 1.0, "nll_loss": 1.0, "acd_loss": 4.0, "lrd_loss": 10.0, "acd_correct": 1, "acd_total": 6,
             "ntokens": 6, "nsentences": 1, "sample_size": 6}]
    with metrics.aggregate() as agg:
        CifHkdCriterion.reduce_metrics(logs)
        m = agg.get_smoothed_values()
    assert m["acd_acc"] == pytest.approx(40.0)
    assert m["acd_loss"] == pytest.approx(0.6, abs=1e-3) and m["lrd_loss"] == pytest.approx(4.0, abs=1e-3)
    assert m["loss"] == pytest.approx(2 / 10 / math.log(2), abs=1e-3)
