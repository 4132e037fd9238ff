"""The ``cif`` criterion and its loss functions, against hand-computed and brute-force values."""
import itertools
import math

import pytest
import torch
from fairseq import metrics

from fairseq_hkd.criterions import losses
from fairseq_hkd.criterions.cif import CifCriterion, CifCriterionConfig
from fairseq_hkd.ops.cif import cif as cif_op

from test_model_cif import _Task, padded_batch, small_model, tf_inputs

PAD, EOS = 1, 2


# 1. loss functions ---------------------------------------------------------------------------------
def test_label_smoothed_ce_matches_the_formula_in_float64():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6)
    target = torch.tensor([[4, 5, EOS], [5, EOS, PAD]])
    eps = 0.1
    loss, nll = losses.label_smoothed_ce(logits, target, eps, PAD)
    lp = torch.log_softmax(logits.double(), -1)
    want_loss = want_nll = 0.0
    for b, s in itertools.product(range(2), range(3)):
        y = int(target[b, s])
        if y == PAD:
            continue
        want_nll += -lp[b, s, y]
        # fairseq's smoothing: eps/(V-1) on every class, 1 - eps - eps/(V-1) extra on the target
        want_loss += -(1 - eps - eps / 5) * lp[b, s, y] - eps / 5 * lp[b, s].sum()
    torch.testing.assert_close(nll.double(), want_nll)
    torch.testing.assert_close(loss.double(), want_loss)


def _ctc_brute_force(lprobs, labels, blank=0):
    """-log sum over all frame paths that collapse to `labels` (T, V small)."""
    T, V = lprobs.shape
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        collapsed = [p for i, p in enumerate(path) if p != blank and (i == 0 or p != path[i - 1])]
        if collapsed == labels:
            total += math.exp(sum(float(lprobs[t, p]) for t, p in enumerate(path)))
    return -math.log(total)


def _ctc_float64(lp, labels, blank=0):
    """-log p(labels | lp [T, V] log-probs) by the CTC forward recursion in float64, written out here
    (independent of losses.ctc_loss / F.ctc_loss); checked against the brute force below."""
    ext = [blank]
    for y in labels:
        ext += [y, blank]
    T, n = lp.shape[0], len(ext)
    alpha = [[-math.inf] * n for _ in range(T)]
    alpha[0][0] = float(lp[0, blank])
    if n > 1:
        alpha[0][1] = float(lp[0, ext[1]])
    for t in range(1, T):
        for s in range(n):
            terms = [alpha[t - 1][s]]
            if s >= 1:
                terms.append(alpha[t - 1][s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[t - 1][s - 2])
            m = max(terms)
            if m > -math.inf:
                alpha[t][s] = m + math.log(sum(math.exp(v - m) for v in terms)) + float(lp[t, ext[s]])
    last = [alpha[T - 1][n - 1]] + ([alpha[T - 1][n - 2]] if n > 1 else [])
    m = max(last)
    return -(m + math.log(sum(math.exp(v - m) for v in last)))


def _label_smoothed_ce_float64(logits, target, eps, pad):
    """fairseq's label smoothing, summed over non-pad positions, in float64: (smoothed loss, nll)."""
    lp = torch.log_softmax(logits.double(), -1)
    V = lp.size(-1)
    loss = nll = 0.0
    for b, s in itertools.product(range(target.size(0)), range(target.size(1))):
        y = int(target[b, s])
        if y != pad:
            nll += -float(lp[b, s, y])
            loss += -(1 - eps - eps / (V - 1)) * float(lp[b, s, y]) - eps / (V - 1) * float(lp[b, s].sum())
    return loss, nll


def test_float64_references_agree_with_brute_force():
    """The test's own CTC recursion against the brute-force path sum (repeats need a blank)."""
    torch.manual_seed(1)
    lp = torch.log_softmax(torch.randn(5, 4, dtype=torch.float64), -1)
    for labels in ([3], [3, 3], [2, 3], [3, 2, 3], [1, 1, 2]):
        assert _ctc_float64(lp, labels) == pytest.approx(_ctc_brute_force(lp, labels), rel=1e-12)


def test_ctc_loss_drops_eos_and_padding_and_matches_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)  # V = 5: blank 0, pad 1, eos 2, labels 3 and 4
    lengths = torch.tensor([4, 3])
    target = torch.tensor([[3, 3, EOS], [4, EOS, PAD]])
    loss, infeasible = losses.ctc_loss(logits, lengths, target, PAD, EOS, blank_idx=0)
    lp = torch.log_softmax(logits.double(), -1)
    want = _ctc_brute_force(lp[0, :4], [3, 3]) + _ctc_brute_force(lp[1, :3], [4])
    assert not infeasible.any()
    assert abs(float(loss) - want) < 1e-4


def test_ctc_infeasible_utterances_are_flagged_and_zeroed():
    target = torch.tensor([[3, 3, 4, EOS], [3, 4, EOS, PAD]])
    assert losses.ctc_required_frames(target, PAD, EOS).tolist() == [4, 2]  # "3 3 4" needs a blank
    logits = torch.randn(2, 3, 5)
    loss, infeasible = losses.ctc_loss(logits, torch.tensor([3, 3]), target, PAD, EOS)
    assert infeasible.tolist() == [True, False]
    alone, _ = losses.ctc_loss(logits[1:], torch.tensor([3]), target[1:, :3], PAD, EOS)
    torch.testing.assert_close(loss, alone)


def test_quantity_loss_and_token_counts():
    alpha = torch.tensor([[0.5, 0.5, 0.75, 0.0], [1.0, 0.25, 0.0, 0.0]])
    assert float(losses.quantity_loss(alpha, torch.tensor([2, 3]))) == pytest.approx(0.25 + 1.75)
    # 1.75 -> 1 fire + tail (0.75 >= 0.5); 1.25 -> 1 fire, leftover 0.25 dropped
    assert losses.predicted_token_counts(alpha, 1.0, 0.5).tolist() == [2, 1]


def test_predicted_token_counts_agree_with_the_cif_op():
    torch.manual_seed(0)
    alpha = torch.rand(16, 30)
    h = torch.randn(16, 30, 4)
    for tail in (0.5, 0.3):
        want = cif_op(alpha, h, None, threshold=1.0, tail_threshold=tail).lengths
        assert losses.predicted_token_counts(alpha, 1.0, tail).tolist() == want.tolist()


def test_token_errors():
    logits = torch.zeros(2, 3, 5)
    logits[0, 0, 3] = logits[0, 1, 4] = logits[0, 2, 2] = 1.0
    logits[1, 0, 4] = logits[1, 1, 3] = logits[1, 2, 4] = 1.0
    target = torch.tensor([[3, 3, EOS], [4, EOS, PAD]])
    errors, total = losses.token_errors(logits, target, PAD)
    assert (int(errors), int(total)) == (2, 5)


# 2. the criterion ---------------------------------------------------------------------------------
def _sample(model, frames=(64, 50, 30), target_lengths=(9, 6, 4)):
    x, L = padded_batch(list(frames))
    target, prev = tf_inputs(model.decoder.dictionary, list(target_lengths))
    S = torch.tensor(target_lengths)
    return {"id": torch.arange(len(frames)), "net_input": {"src_tokens": x, "src_lengths": L, "prev_output_tokens": prev},
            "target": target, "target_lengths": S, "ntokens": int(S.sum()), "nsentences": len(frames)}


def _criterion(model, **kw):
    cfg = CifCriterionConfig(sentence_avg=False, **kw)
    return CifCriterion(cfg, _Task(model.decoder.dictionary))


def test_criterion_loss_is_the_weighted_sum_of_the_terms():
    model = small_model().eval()  # eval: no dropout, so two forwards agree
    sample = _sample(model)
    crit = _criterion(model, ctc_weight=0.3, quantity_weight=2.0, label_smoothing=0.2)
    loss, sample_size, log = crit(model, sample)
    assert sample_size == sample["ntokens"] == 19
    # every term recomputed in float64 from the model's outputs by the test's own code (not losses.*)
    with torch.no_grad():
        out = model(**sample["net_input"], target_lengths=sample["target_lengths"])
    target = sample["target"]
    ce, nll = _label_smoothed_ce_float64(out["decoder_logits"], target, 0.2, PAD)
    lp = torch.log_softmax(out["ctc_logits"].double(), -1)
    ctc = 0.0
    for b in range(target.size(0)):
        labels = [int(y) for y in target[b] if int(y) not in (PAD, EOS)]  # CTC targets: no </s>, no padding
        ctc += _ctc_float64(lp[b, : int(out["encoder_lengths"][b])], labels)
    quantity = sum(abs(float(out["alpha"][b].double().sum()) - S) for b, S in enumerate(sample["target_lengths"].tolist()))
    assert log["ctc_infeasible"] == 0
    assert float(loss.detach()) == pytest.approx(ce + 0.3 * ctc + 2.0 * quantity, rel=1e-5)
    assert log["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert log["nll_loss"] == pytest.approx(nll, rel=1e-5)
    assert log["ctc_loss"] == pytest.approx(ctc, rel=1e-5)
    assert log["quantity_loss"] == pytest.approx(quantity, rel=1e-5)
    counts = losses.predicted_token_counts(out["alpha"], 1.0, 0.5)
    assert log["fire_correct"] == int((counts == sample["target_lengths"]).sum())
    errors, total = losses.token_errors(out["decoder_logits"], sample["target"], PAD)
    assert (log["tf_errors"], log["tf_total"]) == (int(errors), 19)
    # training: no teacher-forced error count; ctc off: no CTC term
    model.train()
    _, _, log = _criterion(model, ctc_weight=0.0)(model, sample)
    assert "tf_errors" not in log and "ctc_loss" not in log


def test_criterion_gradients_reach_the_whole_model():
    model = small_model()
    loss, _, _ = _criterion(model)(model, _sample(model))
    loss.backward()
    # a gradient that exists but is all zero (a detached path) fails as much as a missing one
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().max() > 0]
    assert not missing


def test_reduce_metrics_derives_rates_from_sums():
    logs = [{"loss": 4.0, "nll_loss": 2.0, "ce_loss": 3.0, "ctc_loss": 1.0, "quantity_loss": 0.5, "ntokens": 4,
             "nsentences": 2, "sample_size": 4, "fire_correct": 1, "ctc_infeasible": 0, "tf_errors": 1, "tf_total": 4},
            {"loss": 6.0, "nll_loss": 2.0, "ce_loss": 5.0, "ctc_loss": 3.0, "quantity_loss": 1.5, "ntokens": 6,
             "nsentences": 2, "sample_size": 6, "fire_correct": 2, "ctc_infeasible": 1, "tf_errors": 0, "tf_total": 6}]
    with metrics.aggregate() as agg:
        CifCriterion.reduce_metrics(logs)
        m = agg.get_smoothed_values()
    assert m["loss"] == pytest.approx(10 / 10 / math.log(2), abs=1e-3)
    assert m["nll_loss"] == pytest.approx(4 / 10 / math.log(2), abs=1e-3)
    assert m["quantity_loss"] == pytest.approx(0.2, abs=1e-3)
    assert m["fire_acc"] == pytest.approx(75.0)
    assert m["tf_ter"] == pytest.approx(10.0)
    assert m["ctc_infeasible"] == 1
    assert CifCriterion.logging_outputs_can_be_summed()


def test_criterion_rejects_bad_weights():
    model = small_model()
    with pytest.raises(ValueError, match="--ctc-weight must be >= 0"):
        _criterion(model, ctc_weight=-1.0)
