"""Choosing the CIF count at decoding (CifGenerator ``count_search`` / ``ctc_weight``).

References are independent of the generator's batched code: the CTC score against a float64 sum
over every alignment, and the candidate choice against a one-utterance loop (weights scaled with
``forward_cif(target_lengths=n)``, a plain greedy loop, ``F.ctc_loss`` on an unpadded target).
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from fairseq_hkd.generation.cif_generator import CifGenerator
from test_generator import build_real_model


def ctc_brute_force(lprobs, target, blank):
    """log sum over every frame labelling whose collapse (merge repeats, drop blanks) is ``target``.
    lprobs [T, V] float64."""
    T = lprobs.size(0)
    labels = sorted(set(target) | {blank})
    total = -math.inf
    for path in itertools.product(labels, repeat=T):
        collapsed = [p for i, p in enumerate(path) if p != blank and (i == 0 or p != path[i - 1])]
        if collapsed == list(target):
            total = float(torch.logaddexp(torch.tensor(total, dtype=torch.float64),
                                          sum(lprobs[t, p] for t, p in enumerate(path))))
    return total


def encode(model, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    src = torch.randn(len(lengths), int(lengths.max()), 80, generator=g)
    with torch.no_grad():
        return src, lengths, model.forward_encoder(src, lengths)


def test_ctc_scores_equal_the_sum_over_all_alignments():
    model, d = build_real_model(vocab=6, seed=3)
    gen = CifGenerator([model], d, beam_size=1, count_search=1, ctc_weight=1.0)
    _, _, enc = encode(model, [24, 16], seed=3)  # cif_tiny: 6 and 4 encoder frames
    frames = enc["encoder_lengths"].tolist()
    assert frames == [6, 4]
    a, b, c = (d.index(s) for s in "abc")
    eos, pad = d.eos(), d.pad()
    # M = 2 candidates x B = 2 utterances, row m * B + b; tokens end with </s>, padded after
    hyps = [[a, b, eos], [c, eos], [a, a, b, eos], [a, b, a, b, c, eos],  # the 4th: 5 tokens in 4 frames
            [a, eos, b, eos], [eos, c, eos]]  # inner </s> (sentence boundaries): CTC scores them without it
    width = max(map(len, hyps))
    tokens = torch.tensor([h + [pad] * (width - len(h)) for h in hyps])
    lengths = torch.tensor([len(h) for h in hyps])
    with torch.no_grad():
        got = gen.ctc_scores(enc, tokens, lengths, m=3)
        lprobs = torch.log_softmax(model.forward_ctc(enc).double(), -1)
    for row, h in enumerate(hyps):
        utt = row % 2
        ref = ctc_brute_force(lprobs[utt, : frames[utt]], [t for t in h[:-1] if t != eos], d.bos())
        if ref == -math.inf:
            assert got[row] == -math.inf
        else:
            assert got[row].item() == pytest.approx(ref, abs=1e-4)
    assert got[3] == -math.inf and math.isfinite(got[0])


def greedy_alone(model, d, emb, n):
    """Plain greedy loop over one utterance's n CIF outputs emb [1, n, C] (</s> only at the last
    step, appended when not chosen) -> (tokens incl. </s>, summed log-prob)."""
    prefix, score = [d.eos()], 0.0
    for i in range(n):
        logits, _ = model.decoder(torch.tensor([prefix]), emb[:, : i + 1], None)
        lp = torch.log_softmax(logits[0, -1].double(), -1)
        lp[d.bos()] = lp[d.pad()] = -math.inf
        if i < n - 1:
            lp[d.eos()] = -math.inf
        prefix.append(int(lp.argmax()))
        score += float(lp[prefix[-1]])
    return prefix[1:] if prefix[-1] == d.eos() else prefix[1:] + [d.eos()], score


def count_search_reference(model, d, src, src_len, radius, ctc_weight):
    """One utterance: every candidate count decoded alone, CTC from F.ctc_loss on its 1-D target.
    -> (tokens of the chosen hypothesis, chosen count)."""
    enc = model.forward_encoder(src, src_len)
    _, raw = model.forward_cif(enc)
    L = int(raw.lengths[0])
    lprobs = torch.log_softmax(model.forward_ctc(enc).double(), -1)[0]
    best = None
    for delta in range(-radius, radius + 1):
        n = max(L + delta, 1)
        _, cif = model.forward_cif(enc, target_lengths=torch.tensor([n]))
        assert int(cif.lengths[0]) == n
        tokens, score = greedy_alone(model, d, cif.embeddings, n)
        target = torch.tensor(tokens[:-1], dtype=torch.long)
        ctc = -F.ctc_loss(lprobs, target, torch.tensor(lprobs.size(0)), torch.tensor(target.numel()),
                          blank=d.bos(), reduction="sum").item()
        joint = ctc_weight * ctc + (1 - ctc_weight) * score if radius > 0 else 0.0
        if best is None or joint > best[0] + 1e-6:
            best = (joint, tokens, n)
    return best[1], best[2]


@pytest.mark.parametrize("radius,ctc_weight", [(0, 0.7), (1, 0.7), (2, 0.3), (1, 0.0)])
def test_batched_count_search_equals_one_utterance_loop(radius, ctc_weight):
    model, d = build_real_model(vocab=12, seed=4)
    src, lengths, _ = encode(model, [200, 96, 160, 128], seed=4)
    gen = CifGenerator([model], d, beam_size=1, count_search=radius, ctc_weight=ctc_weight)
    with torch.no_grad():
        out = gen.decode(src, lengths)
        chosen = []
        for b in range(len(lengths)):
            tokens, n = count_search_reference(model, d, src[b : b + 1, : int(lengths[b])], lengths[b : b + 1],
                                               radius, ctc_weight)
            assert out.hypos[b][0]["tokens"].tolist() == tokens
            assert int(out.cif_lengths[b]) == n
            assert out.hypos[b][0]["fires"].numel() == n
            chosen.append(n)
        raw = CifGenerator([model], d, beam_size=1).decode(src, lengths).cif_lengths.tolist()
    if radius > 0 and ctc_weight > 0:  # the search is not vacuous: some count moved away from L
        assert chosen != raw, (chosen, raw)


def test_radius_zero_keeps_the_count_and_scales_the_weights():
    """R = 0: L_b tokens, each integrating one unit of weight (as in training): the L_b embeddings
    add up to sum_t alpha'_t h_t with alpha' = alpha * L_b / sum(alpha) (float64 here); the raw
    weights' embeddings do not."""
    model, d = build_real_model(vocab=12, seed=5)
    src, lengths, enc = encode(model, [200, 150], seed=5)
    with torch.no_grad():
        alpha, raw = model.forward_cif(enc)
        out = CifGenerator([model], d, beam_size=2, count_search=0).decode(src, lengths)
        _, scaled = model.forward_cif(enc, target_lengths=out.cif_lengths)
    assert out.cif_lengths.tolist() == raw.lengths.tolist()
    h, a = enc["encoder_out"].double(), alpha.double()
    for b, n in enumerate(raw.lengths.tolist()):
        ref = (a[b] * n / a[b].sum())[:, None].mul(h[b]).sum(0)
        torch.testing.assert_close(scaled.embeddings[b, :n].double().sum(0), ref, atol=1e-3, rtol=1e-4)
        assert not torch.allclose(raw.embeddings[b, :n].double().sum(0), ref, atol=1e-3, rtol=1e-4)
    # the decoded hypothesis is the search over the scaled embeddings
    gen = CifGenerator([model], d, beam_size=2)
    with torch.no_grad():
        ref_hypos = gen.to_hypos(gen.beam_search(scaled.embeddings, scaled.lengths), [None] * 2)
    assert [h[0]["tokens"].tolist() for h in out.hypos] == [h[0]["tokens"].tolist() for h in ref_hypos]


def test_candidates_never_exceed_the_encoder_frames():
    """An utterance whose every frame fires: L_b + 1 tokens cannot be integrated (one unit per
    frame at most), so that candidate is L_b again instead of an error."""
    model, d = build_real_model(vocab=12, seed=7)
    src, lengths, enc = encode(model, [40, 200], seed=7)
    with torch.no_grad():
        model.cif.predict_alpha = lambda h, mask: torch.where(mask, 0.0, 0.999) if mask is not None else \
            torch.full(h.shape[:2], 0.999)
        out = CifGenerator([model], d, beam_size=1, count_search=1, ctc_weight=0.7).decode(src, lengths)
    assert (out.cif_lengths <= out.encoder_lengths).all()


def test_peaky_weights_decode_every_candidate():
    """A model trained long enough gives peaky weights: ~1 at its fires, ~1e-9 or exactly 0 between. The
    candidate L_b + 1 must still fire L_b + 1 tokens (the free frames fill the unit the capped ones
    leave), and no candidate may exceed the frames of positive weight: decoding does not raise, and
    the count search tries L_b + 1 where a frame of tiny weight can take it."""
    model, d = build_real_model(vocab=12, seed=7)
    src, lengths, enc = encode(model, [200, 160], seed=7)

    def peaky(h, mask):
        t = torch.arange(h.shape[1])
        a = torch.where(t % 3 == 0, torch.tensor(0.999), torch.where(t % 3 == 1, torch.tensor(1e-9), torch.tensor(0.0)))
        a = a.expand(h.shape[0], -1)
        return a.masked_fill(mask, 0.0) if mask is not None else a

    with torch.no_grad():
        model.cif.predict_alpha = peaky
        alpha, raw = model.forward_cif(enc)
        out = CifGenerator([model], d, beam_size=1, count_search=1, ctc_weight=0.0).decode(src, lengths)
        gen = CifGenerator([model], d, beam_size=1, count_search=1, ctc_weight=0.0)
        _, cands = gen.search_candidates(enc, raw.lengths, alpha)
    support = (alpha > 0).sum(1)
    assert (out.cif_lengths <= support).all()
    B = len(lengths)
    assert cands.lengths[2 * B:].tolist() == torch.minimum(raw.lengths + 1, support).tolist()
    assert (raw.lengths + 1 <= support).any()  # the +1 candidate is searched somewhere


def test_nar_decoder_count_search_runs_per_candidate():
    model, d = build_real_model("non_autoregressive", vocab=12, seed=6)
    src, lengths, _ = encode(model, [180, 120], seed=6)
    with torch.no_grad():
        out = CifGenerator([model], d, beam_size=3, count_search=1, ctc_weight=0.7).decode(src, lengths)
    for b, hypos in enumerate(out.hypos):
        assert len(hypos) == 1 and hypos[0]["tokens"][-1] == d.eos()
        assert hypos[0]["tokens"].numel() <= int(out.cif_lengths[b]) + 1


@pytest.mark.parametrize("kwargs,message", [({"count_search": -2}, "--cif-count-search"),
                                            ({"count_search": 1, "ctc_weight": 1.5}, "--cif-ctc-weight")])
def test_bad_options_are_rejected(kwargs, message):
    model, d = build_real_model(vocab=8)
    with pytest.raises(ValueError, match=message):
        CifGenerator([model], d, **kwargs)
