"""Per-term gradient norms (fairseq_hkd.criterions.term_gradients) on the small CIF model of the
criterion tests: each term's norms equal an independent torch.autograd.grad of that term, the term
gradients add up to the gradient of the criterion's loss, a term with weight 0 reports 0, and the
clip counts follow the norms."""
import math

import pytest
import torch

from fairseq_hkd.criterions import term_gradients as tg

from test_hkd_criterion import _crit, _hkd_sample
from test_model_cif import small_model

SEED = 11


def _setup(**kw):
    model = small_model()  # training mode: dropout on
    crit = _crit(model, acd_negatives=5, acd_temperature=0.1, **kw)
    return model, crit, _hkd_sample(model)


def _direct(model, crit, sample, term):
    """The term's gradient computed here: same seed, the criterion's terms, autograd.grad per
    module, the fairseq normalisation (weight * term / ntokens)."""
    torch.manual_seed(SEED)
    terms, _, _ = crit.compute_terms(model, sample)
    modules = {"encoder": model.encoder, "cif": model.cif, "ctc": model.ctc_proj, "decoder": model.decoder,
               "proj": crit}
    params = {g: list(m.parameters()) for g, m in modules.items()}
    flat = [p for g in tg.GROUPS for p in params[g]]
    w = crit.weights.get(term, 0.0)
    if term not in terms or w == 0:
        return {g: 0.0 for g in tg.GROUPS}
    grads = torch.autograd.grad(w * terms[term] / sample["ntokens"], flat, allow_unused=True)
    by_param = {id(p): g for p, g in zip(flat, grads)}
    return {g: math.sqrt(sum(float(by_param[id(p)].double().pow(2).sum()) for p in params[g]
                             if by_param[id(p)] is not None)) for g in tg.GROUPS}


def _measured(model, crit, sample):
    torch.manual_seed(SEED)
    return tg.term_gradients(model, crit, sample)


def test_groups_cover_every_parameter_once():
    model, crit, _ = _setup()
    groups = tg.parameter_groups(model, crit)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in list(model.parameters()) + list(crit.parameters())}
    assert len(groups["proj"]) == 4  # acd_proj and lrd_proj weight + bias


def test_term_norms_equal_direct_autograd():
    model, crit, sample = _setup(ctc_weight=0.3, quantity_weight=2.0, acd_weight=0.7, lrd_weight=0.05)
    grads, values, size = _measured(model, crit, sample)
    assert size == sample["ntokens"] == 19
    for term in tg.TERMS:
        expected = _direct(model, crit, sample, term)
        for g in tg.GROUPS:
            got = float(grads[term][g].norm())
            assert got == pytest.approx(expected[g], rel=1e-5, abs=1e-9), (term, g)
    # which term reaches which group (a structural check on the partition)
    norm = {t: {g: float(grads[t][g].norm()) for g in tg.GROUPS} for t in tg.TERMS}
    assert norm["ctc"]["ctc"] > 0 and norm["ctc"]["decoder"] == 0 and norm["ctc"]["cif"] == 0
    assert norm["ce"]["ctc"] == 0 and norm["ce"]["decoder"] > 0 and norm["ce"]["proj"] == 0
    assert norm["acd"]["decoder"] == 0 and norm["acd"]["proj"] > 0 and norm["acd"]["encoder"] > 0
    assert norm["lrd"]["decoder"] > 0 and norm["lrd"]["proj"] > 0
    assert norm["quantity"]["cif"] > 0 and norm["quantity"]["decoder"] == 0


def test_term_gradients_sum_to_the_gradient_of_the_loss():
    model, crit, sample = _setup(ctc_weight=0.5, acd_weight=1.0, lrd_weight=0.01)
    grads, values, size = _measured(model, crit, sample)
    total = tg._sum([grads[t] for t in tg.TERMS])
    # fairseq's path: criterion(model, sample) -> loss, sample_size; backward of loss / sample_size
    torch.manual_seed(SEED)
    model.zero_grad()
    crit.zero_grad()
    loss, sample_size, log = crit(model, sample)
    (loss / sample_size).backward()
    assert sum(values.values()) == pytest.approx(float(loss.detach()) / sample_size, rel=1e-6)
    groups = tg.parameter_groups(model, crit)
    for g in tg.GROUPS:
        ref = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in groups[g]])
        # float32 sums of five contributions in another order: equal to rounding, relative to the scale
        assert float((total[g] - ref).norm()) <= 1e-5 * float(ref.norm()), g
        assert torch.allclose(total[g], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), g
    rep = tg.batch_report(grads, values, clip_norm=1e9)
    gnorm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in list(model.parameters()) + list(crit.parameters())
                          if p.grad is not None))
    assert rep["rows"]["total"]["all"] == pytest.approx(gnorm, rel=1e-5)
    assert rep["rows"]["ce"]["cos_enc"] == pytest.approx(1.0, abs=1e-6)


def test_weight_zero_reports_zero():
    model, crit, sample = _setup(ctc_weight=0.0, lrd_weight=0.0, acd_weight=0.5)
    grads, values, _ = _measured(model, crit, sample)
    rep = tg.batch_report(grads, values, clip_norm=5.0)["rows"]
    for term in ("ctc", "lrd"):
        assert values[term] == 0.0
        assert all(rep[term][g] == 0.0 for g in tg.GROUPS) and rep[term]["all"] == 0.0
        assert rep[term]["cos_enc"] is None  # no direction to compare
    for term in ("ce", "quantity", "acd"):
        assert rep[term]["all"] > 0
    # a computed term with weight 0: quantity is always computed by the criterion
    model, crit, sample = _setup(quantity_weight=0.0)
    grads, values, _ = _measured(model, crit, sample)
    assert float(torch.cat(list(grads["quantity"].values())).abs().sum()) == 0.0 and values["quantity"] == 0.0


def test_measure_summary_and_clip_counts():
    model, crit, sample = _setup()
    batches = [sample, _hkd_sample(model, seed=1)]
    probe = tg.measure(model, crit, batches, clip_norm=1e9, seed=SEED)
    norms = [r["clip"]["total"]["norm"] for r in probe]
    C = (min(norms) + max(norms)) / 2 if norms[0] != norms[1] else norms[0] * 2
    reports = tg.measure(model, crit, batches, clip_norm=C, seed=SEED)
    assert [r["clip"]["total"]["norm"] for r in reports] == pytest.approx(norms)  # same seeds, same numbers
    s = tg.summarise(reports, C)
    assert s["clip"]["total"]["clipped"] == sum(n > C for n in norms)
    assert s["clip"]["total"]["mean_scale"] == pytest.approx(sum(min(1.0, C / n) for n in norms) / 2, rel=1e-5)
    assert s["rows"]["ce"]["all"] == pytest.approx(sum(r["rows"]["ce"]["all"] for r in reports) / 2)
    assert s["after_clip_all"]["ce"] == pytest.approx(
        sum(min(1.0, C / r["clip"]["total"]["norm"]) * r["rows"]["ce"]["all"] for r in reports) / 2, rel=1e-5)
    table = tg.format_table(s)
    for name in (*tg.TERMS, "total", "cif_terms", "clip at"):
        assert name in table
    assert tg.summarise(reports, 0.0)  # clip_norm 0 (no clipping) works too


def test_criterion_config_from_a_cif_or_cif_hkd_checkpoint():
    from fairseq.criterions import build_criterion

    from fairseq_hkd.criterions.cif_hkd import CifHkdCriterion

    cif = {"_name": "cif", "label_smoothing": 0.2, "ce_weight": 1.0, "ctc_weight": 0.3, "quantity_weight": 1.0,
           "nonfinite_loss": "error", "sentence_avg": False}
    cfg = tg.criterion_config(cif, sentence_avg=False)
    assert cfg._name == "cif_hkd" and cfg.ctc_weight == 0.3 and cfg.label_smoothing == 0.2
    assert (cfg.acd_weight, cfg.lrd_weight) == (1.0, 0.01)  # cif_hkd's defaults
    hkd = {**cif, "_name": "cif_hkd", "acd_weight": 0.5, "lrd_weight": 0.1, "lrd_reduction": "mean"}
    cfg = tg.criterion_config(hkd, sentence_avg=True, lrd_weight=0.0)
    assert (cfg.acd_weight, cfg.lrd_weight, str(cfg.lrd_reduction), cfg.sentence_avg) == (0.5, 0.0, "mean", True)
    model = small_model()
    from test_hkd_criterion import _Task

    crit = build_criterion(cfg, _Task(model.decoder.dictionary))  # as task.build_criterion builds it
    assert isinstance(crit, CifHkdCriterion) and crit.weights["acd"] == 0.5 and crit.lrd_proj is None
