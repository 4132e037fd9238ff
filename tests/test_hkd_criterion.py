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
    lrd = float(((u - e) ** 2).sum().detach())
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


# --- distillation reaches the model (issue 13) ----------------------------------------------
# With the CE, CTC and quantity weights at 0 only ACD/LRD can move the model: the tests below fail
# if the student states fed to acd_proj / lrd_proj are detached (CE, CTC and quantity would hide
# that, since they give every parameter a gradient anyway).
DISTILL_ONLY = dict(ce_weight=0.0, ctc_weight=0.0, quantity_weight=0.0)
# Attention key biases get no gradient from any loss: q . b_k is the same for every key of a query,
# and the softmax ignores a shift shared by a row (numerically ~1e-9 of the total norm).
KEY_BIASES = ("self_attn.linear_k.bias", "self_attn.k_proj.bias")
UPSTREAM_OF_C = ("encoder.", "cif.")  # the subsampler, the conformer layers, the CIF weight predictor


def _model_grads(model, crit, sample):
    model.zero_grad(set_to_none=True)
    crit.zero_grad(set_to_none=True)
    loss, _, _ = crit(model, sample)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _assert_reaches(grads, reached, unreached):
    """Every parameter named by a ``reached`` prefix has a gradient, each a real share of the total
    (key biases: ~0, see KEY_BIASES); every one under ``unreached`` has none (None or exactly 0)."""
    total = torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values() if g is not None))
    assert total > 0
    seen = set()
    for n, g in grads.items():
        if n.startswith(reached):
            seen.add(n)
            assert g is not None, n
            share = float(g.double().norm() / total)
            if n.endswith(KEY_BIASES):
                assert share < 1e-6, (n, share)
            else:
                assert share > 1e-6, (n, share)  # detached states give exactly 0
        elif n.startswith(unreached):
            seen.add(n)
            assert g is None or not g.any(), n
    assert seen == set(grads)  # the test classified every parameter of the model


def test_acd_alone_trains_the_encoder_and_not_the_decoder():
    model = small_model()  # training mode, as in fairseq-train
    crit = _crit(model, lrd_weight=0.0, **DISTILL_ONLY)  # ACD (paper defaults) is the only term
    grads = _model_grads(model, crit, _hkd_sample(model))
    assert any(n.startswith("encoder.subsample.") for n in grads) and any(".layers." in n for n in grads)
    _assert_reaches(grads, reached=UPSTREAM_OF_C, unreached=("decoder.", "ctc_proj."))
    assert grads["ctc_proj.weight"] is None  # CTC weight 0: the term is not even computed
    assert crit.acd_proj.weight.grad.any()


def test_lrd_alone_trains_the_decoder_and_through_c_the_encoder():
    model = small_model()
    crit = _crit(model, acd_weight=0.0, **DISTILL_ONLY)
    grads = _model_grads(model, crit, _hkd_sample(model))
    # s_i = W_out [LN(layers(W_in [E(y_{i-1}); c_{i-1}])); c_i]: every decoder parameter but the
    # vocabulary projection after s_i, and (through c_{i-1}, c_i) everything upstream of c
    on_path = tuple(n for n in grads if n.startswith("decoder.") and n != "decoder.output_projection.weight")
    assert {"decoder.embed_tokens.weight", "decoder.input_proj.weight", "decoder.output_proj.weight",
            "decoder.layer_norm.weight", "decoder.layers.1.fc2.weight"} <= set(on_path)
    _assert_reaches(grads, reached=on_path + UPSTREAM_OF_C,
                    unreached=("decoder.output_projection.", "ctc_proj."))
    assert not grads["decoder.output_projection.weight"].any()  # only CE reads the logits
    assert crit.lrd_proj.weight.grad.any()


def _capture_outputs(model):
    """Keep the model's last output dict, with .grad retained on the student states."""
    captured = {}

    def hook(module, args, out):
        out["cif"].embeddings.retain_grad()
        out["decoder_states"].retain_grad()
        captured["out"] = out

    return captured, model.register_forward_hook(hook)


def _vjp(model, sample, key, grad, prefixes):
    """Parameter gradients that ``grad`` on output ``key`` alone gives (a fresh eval-mode forward)."""
    out = model(**sample["net_input"], target_lengths=sample["target_lengths"])
    states = out["cif"].embeddings if key == "cif" else out[key]
    params = [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes)]
    vjp = torch.autograd.grad(states, [p for _, p in params], grad.to(states.dtype), allow_unused=True)
    return {n: g for (n, _), g in zip(params, vjp)}


def _assert_param_grads_equal(model, expected):
    largest = max(float(g.abs().max()) for g in expected.values() if g is not None)
    for n, p in model.named_parameters():
        if n in expected:
            want = torch.zeros_like(p) if expected[n] is None else expected[n]
            # key biases: both sides are rounding noise around 0 (KEY_BIASES), so a global tolerance
            scale = 0.1 * largest if n.endswith(KEY_BIASES) else float(want.abs().max())
            torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5 * scale, msg=n)


def test_acd_gradient_on_the_cif_embeddings_equals_a_float64_recomputation(monkeypatch):
    model = small_model().eval()  # eval: the second forward in _vjp is the same function
    sample = _hkd_sample(model, seed=3)
    weight, tau, K = 0.7, 0.1, 5
    crit = _crit(model, acd_weight=weight, acd_temperature=tau, acd_negatives=K, lrd_weight=0.0, **DISTILL_ONLY)
    keep = sample["target"].ne(1)
    N = int(keep.sum())
    negatives = losses.sample_negatives(N, K, generator=torch.Generator().manual_seed(11))
    monkeypatch.setattr(losses, "sample_negatives", lambda n, k, device=None, generator=None: negatives)
    captured, handle = _capture_outputs(model)
    _model_grads(model, crit, sample)
    handle.remove()
    out = captured["out"]
    # by hand, float64: d(weight * sum_i -log softmax([z_i.e_i, z_i.e_(n_ik)] / tau)_0) / d c_i
    c = out["cif"].embeddings.detach()[keep].double().requires_grad_(True)
    z = c @ crit.acd_proj.weight.detach().double().t() + crit.acd_proj.bias.detach().double()
    e = sample["teacher_states"][keep].double()
    z, e = z / z.norm(dim=1, keepdim=True), e / e.norm(dim=1, keepdim=True)
    pos = (z * e).sum(1) / tau                                  # [N]
    neg = torch.einsum("nd,nkd->nk", z, e[negatives]) / tau     # [N, K]
    acd = weight * (torch.logsumexp(torch.cat([pos[:, None], neg], 1), dim=1) - pos).sum()
    (grad_c,) = torch.autograd.grad(acd, c)
    expected = torch.zeros_like(out["cif"].embeddings, dtype=torch.float64)
    expected[keep] = grad_c
    got = out["cif"].embeddings.grad
    assert got is not None and grad_c.abs().max() > 1e-3
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6 * float(grad_c.abs().max()))
    assert not out["decoder_states"].grad.any()  # ACD never reads s_i
    # and the encoder and the CIF predictor get exactly what this gradient gives, nothing else
    _assert_param_grads_equal(model, _vjp(model, sample, "cif", expected, UPSTREAM_OF_C))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_lrd_gradient_on_the_decoder_states_equals_a_float64_recomputation(reduction):
    model = small_model().eval()
    sample = _hkd_sample(model, seed=4)
    weight = 0.05
    crit = _crit(model, acd_weight=0.0, lrd_weight=weight, lrd_reduction=reduction, **DISTILL_ONLY)
    captured, handle = _capture_outputs(model)
    _model_grads(model, crit, sample)
    handle.remove()
    out = captured["out"]
    keep = sample["target"].ne(1)
    # by hand, float64: d(weight * sum_i r_d (W s_i + b - e_i)_d^2) / d s_i
    s = out["decoder_states"].detach()[keep].double().requires_grad_(True)
    u = s @ crit.lrd_proj.weight.detach().double().t() + crit.lrd_proj.bias.detach().double()
    sq = (u - sample["teacher_states"][keep].double()) ** 2
    lrd = weight * (sq.sum() if reduction == "sum" else sq.mean(dim=1).sum())
    (grad_s,) = torch.autograd.grad(lrd, s)
    expected = torch.zeros_like(out["decoder_states"], dtype=torch.float64)
    expected[keep] = grad_s
    got = out["decoder_states"].grad
    assert got is not None and grad_s.abs().max() > 1e-4
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6 * float(grad_s.abs().max()))
    # the decoder, and through c the encoder, get exactly what this gradient gives, nothing else
    _assert_param_grads_equal(model, _vjp(model, sample, "decoder_states", expected, ("decoder.",) + UPSTREAM_OF_C))
