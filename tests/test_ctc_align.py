"""CTC forced alignment and the segment count loss (criterions/ctc_align.py), against an exhaustive
search over frame paths, a loop over segments written out here, and the criterion's wiring."""
import itertools

import pytest
import torch

from fairseq_hkd.criterions import losses
from fairseq_hkd.criterions.ctc_align import ctc_first_frames, segment_count_loss

from test_criterion_cif import _criterion, _sample
from test_model_cif import small_model

PAD, EOS = 1, 2


def _best_path_first_frames(lp, labels, blank=0):
    """Exhaustive search over every frame path of lp [T, V] that collapses to ``labels``: the first
    frame of each label on the best-scoring one (None: no path)."""
    T, V = lp.shape
    best = None
    for path in itertools.product(range(V), repeat=T):
        collapsed = [p for i, p in enumerate(path) if p != blank and (i == 0 or p != path[i - 1])]
        if collapsed != list(labels):
            continue
        score = sum(float(lp[t, p]) for t, p in enumerate(path))
        if best is None or score > best[0]:
            best = (score, path)
    if best is None:
        return None
    path = best[1]
    return [t for t, p in enumerate(path) if p != blank and (t == 0 or p != path[t - 1])]


def test_first_frames_follow_the_best_path_found_by_exhaustive_search():
    g = torch.Generator().manual_seed(0)
    checked = no_path = 0
    for _ in range(150):
        T = int(torch.randint(1, 7, (1,), generator=g))
        U = int(torch.randint(0, 4, (1,), generator=g))
        labels = torch.randint(1, 4, (1, U), generator=g)  # repeats included: they need a blank between
        logits = 3 * torch.randn(1, T + 2, 4, generator=g)  # two padded frames past the length
        first, ok = ctc_first_frames(logits, torch.tensor([T]), labels, torch.tensor([U]), blank=0)
        want = _best_path_first_frames(torch.log_softmax(logits[0, :T].double(), -1), labels[0].tolist())
        if want is None:
            no_path += 1
            assert not bool(ok[0])
        else:
            checked += 1
            assert bool(ok[0]) and first[0].tolist() == want
    assert checked > 100 and no_path > 5  # both cases were exercised


def test_first_frames_of_a_batch_equal_each_row_alone():
    g = torch.Generator().manual_seed(1)
    lengths, U = torch.tensor([9, 7, 5, 9, 3]), torch.tensor([3, 2, 0, 4, 1])
    logits, labels = torch.randn(5, 9, 6, generator=g), torch.randint(1, 6, (5, 4), generator=g)
    first, ok = ctc_first_frames(logits, lengths, labels, U, blank=0)
    for b in range(5):
        n, u = int(lengths[b]), int(U[b])
        one, ok1 = ctc_first_frames(logits[b:b + 1, :n], lengths[b:b + 1], labels[b:b + 1, :u], U[b:b + 1], blank=0)
        assert bool(ok1[0]) == bool(ok[b])
        assert one[0].tolist() == first[b, :u].tolist()
        assert (first[b, u:] == -1).all()


def _segment_loss_loop(alpha, first, U, T, ok, slack):
    """The segment count loss written as a loop over rows and segments, in float64."""
    total, outside = 0.0, 0
    for b in range(alpha.size(0)):
        u = int(U[b])
        if u == 0 or not bool(ok[b]):
            continue
        bounds = [0] + first[b, :u].tolist() + [int(T[b])]
        for i in range(u + 1):
            s = float(alpha[b, bounds[i]:bounds[i + 1]].double().sum())
            lo, hi = (0.0, 1.0) if i == 0 else (1.0, 2.0) if i == u else (1 - slack, 1 + slack)
            d = max(lo - s, 0.0) + max(s - hi, 0.0)
            total += d
            outside += d > 0
    return total, outside


def test_segment_count_loss_equals_a_loop_over_segments():
    g = torch.Generator().manual_seed(2)
    alpha = torch.rand(4, 12, generator=g)
    T = torch.tensor([12, 10, 8, 12])
    alpha[1, 10:] = 0.0
    alpha[2, 8:] = 0.0
    first = torch.tensor([[1, 4, 9], [0, 6, -1], [2, 3, 7], [-1, -1, -1]])
    U = torch.tensor([3, 2, 3, 0])
    ok = torch.tensor([True, True, False, True])
    for slack in (0.5, 0.2):
        loss, outside = segment_count_loss(alpha, first, U, T, ok, slack)
        want, want_outside = _segment_loss_loop(alpha, first, U, T, ok, slack)
        assert want_outside > 0
        torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.float64))
        assert int(outside) == want_outside


def test_segment_count_loss_by_hand_and_its_gradient_stays_in_the_segment():
    # one row, 6 frames, labels at frames 1 and 2: segments [0,1) [1,2) [2,6)
    alpha = torch.tensor([[0.3, 0.2, 0.9, 0.9, 0.9, 0.1]], requires_grad=True)
    loss, outside = segment_count_loss(alpha, torch.tensor([[1, 2]]), torch.tensor([2]), torch.tensor([6]),
                                       torch.tensor([True]), slack=0.5)
    # first 0.3 in [0, 1]; inner 0.2 < 0.5 by 0.3; last 2.8 > 2 by 0.8
    torch.testing.assert_close(loss, torch.tensor(1.1))
    assert int(outside) == 2
    loss.backward()
    torch.testing.assert_close(alpha.grad, torch.tensor([[0.0, -1.0, 1.0, 1.0, 1.0, 1.0]]))


def test_criterion_adds_the_segment_term_from_its_start_update_in_training_only():
    model = small_model()
    sample = _sample(model)
    crit = _criterion(model, segment_count_weight=0.7, segment_count_start=10)
    model.train()
    crit.set_num_updates(9)
    _, _, log = crit(model, sample)
    assert "segment_loss" not in log
    crit.set_num_updates(10)
    torch.manual_seed(0)
    loss, _, log = crit(model, sample)
    assert "segment_loss" in log and "segments_outside" in log
    # the term, recomputed from the same forward pass's outputs
    torch.manual_seed(0)
    out = model(**sample["net_input"], target_lengths=sample["target_lengths"])
    labels, U = losses.ctc_labels(sample["target"], PAD, EOS)
    first, ok = ctc_first_frames(out["ctc_logits"], out["encoder_lengths"], labels, U, blank=0)
    want, want_outside = _segment_loss_loop(out["alpha"].detach(), first, U, out["encoder_lengths"], ok, 0.5)
    assert log["segment_loss"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert log["segments_outside"] == want_outside
    model.eval()
    _, _, log = crit(model, sample)
    assert "segment_loss" not in log  # validation: no alignment, no term


def test_segment_term_alone_reaches_the_weight_predictor():
    model = small_model()
    model.train()
    sample = _sample(model)
    crit = _criterion(model, ce_weight=0.0, ctc_weight=0.0, quantity_weight=0.0, segment_count_weight=1.0,
                      segment_count_slack=0.0)  # slack 0: every inner segment not exactly 1 is outside
    loss, _, log = crit(model, sample)
    assert log["segments_outside"] > 0
    loss.backward()
    assert model.cif.proj.weight.grad.abs().sum() > 0
    assert model.ctc_proj.weight.grad is None or model.ctc_proj.weight.grad.abs().sum() == 0  # alignment: no gradient


def test_ctc_labels_left_align_without_eos_and_padding():
    target = torch.tensor([[5, 6, 7, EOS], [8, EOS, PAD, PAD]])
    labels, U = losses.ctc_labels(target, PAD, EOS)
    assert U.tolist() == [3, 1]
    assert labels.tolist() == [[5, 6, 7], [8, PAD, PAD]]
