"""CIF search (fairseq_hkd.generation.cif_generator) against independent references.

A small mock model implements the model contract of docs/DESIGN.md (forward_encoder, forward_cif,
an incremental decoder with reorder_incremental_state); its decoder output at step i depends on
every earlier token, so beam reordering mistakes change the result. References recompute every
prefix from scratch in float64 (no incremental state, one utterance at a time).
"""
import itertools
import math

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models import FairseqIncrementalDecoder

from fairseq_hkd.generation.cif_generator import CifGenerator
from fairseq_hkd.ops.cif import CifOutput


def make_dict(n_symbols):
    d = Dictionary()
    for i in range(n_symbols):
        d.add_symbol(chr(ord("a") + i))
    return d


class MockDecoder(FairseqIncrementalDecoder):
    """h_i = tanh(sum_{j<=i} E[prev_j] + W c_i), logits = h_i U (float64 weights)."""

    def __init__(self, dictionary, dim, seed, autoregressive=True):
        super().__init__(dictionary)
        g = torch.Generator().manual_seed(seed)
        V = len(dictionary)
        self.embed = torch.nn.Parameter(torch.randn(V, dim, generator=g, dtype=torch.float64), requires_grad=False)
        self.w = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64), requires_grad=False)
        self.u = torch.nn.Parameter(2 * torch.randn(dim, V, generator=g, dtype=torch.float64), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(V, dtype=torch.float64), requires_grad=False)
        self.autoregressive = autoregressive

    def forward(self, prev_output_tokens, cif, cif_padding_mask, incremental_state=None):
        if not self.autoregressive:
            prev_output_tokens = torch.full_like(prev_output_tokens, self.dictionary.eos())
        emb = self.embed[prev_output_tokens]
        if incremental_state is not None:
            state = self.get_incremental_state(incremental_state, "sum")
            s = emb[:, -1] if state is None else state["s"] + emb[:, -1]
            self.set_incremental_state(incremental_state, "sum", {"s": s})
            s, cif = s[:, None], cif[:, -1:]
        else:
            s = emb.cumsum(1)
        h = torch.tanh(s + cif.double() @ self.w)
        return h @ self.u + self.bias, {"states": h}

    def reorder_incremental_state(self, incremental_state, new_order):
        state = self.get_incremental_state(incremental_state, "sum")
        if state is not None:
            state["s"] = state["s"].index_select(0, new_order)
            self.set_incremental_state(incremental_state, "sum", state)


class MockModel(torch.nn.Module):
    """src_tokens [B, T, C] are used directly as the CIF embeddings (one token per frame)."""

    def __init__(self, dictionary, dim=6, seed=0, autoregressive=True):
        super().__init__()
        self.decoder = MockDecoder(dictionary, dim, seed, autoregressive)

    def forward_encoder(self, src_tokens, src_lengths):
        mask = torch.arange(src_tokens.size(1), device=src_tokens.device)[None, :] >= src_lengths[:, None]
        return {"encoder_out": src_tokens, "encoder_padding_mask": mask, "encoder_lengths": src_lengths}

    def forward_cif(self, encoder_out, target_lengths=None, tail_threshold=None):
        h, lengths = encoder_out["encoder_out"], encoder_out["encoder_lengths"]
        valid = ~encoder_out["encoder_padding_mask"]
        emb = h * valid[..., None]
        out = CifOutput(emb, lengths, valid, torch.arange(h.size(1), device=h.device).expand(h.size(0), -1) * valid)
        return valid.float(), out


def make_batch(lengths, dim=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(int(lengths.max()), 1), dim, generator=g)
    x = x * (torch.arange(x.size(1))[None, :] < lengths[:, None])[..., None]
    return x, lengths


def step_lprobs(model, c, prefix):
    """float64 log-probs of the next token after ``prefix`` (starting with </s>), from scratch."""
    d = model.decoder.dictionary
    tokens = torch.tensor([prefix])
    logits, _ = model.decoder(tokens, c[None, : len(prefix)], None)
    lp = torch.log_softmax(logits[0, -1], -1)
    lp[d.bos()] = -math.inf
    lp[d.pad()] = -math.inf
    return lp


def all_hypotheses(model, c, L, eos_slack=0, inner_eos=False):
    """Every hypothesis under the documented rules, with its float64 score (brute force): L steps,
    </s> chosen only at step L - 1 (or L - 2 with eos_slack 1) and ending the hypothesis, </s>
    appended after a last step that chose another token. inner_eos: every hypothesis runs all L
    steps, </s> allowed at any of them (a sentence boundary)."""
    d = model.decoder.dictionary
    allowed = [i for i in range(len(d)) if i not in (d.bos(), d.pad())]
    out = {}
    for m in range(max(L, 1) if inner_eos else 1, L + 1):
        for seq in itertools.product(allowed, repeat=m):
            if d.eos() in seq[:-1] and not inner_eos:
                continue
            if seq[-1] == d.eos() and m - 1 < L - 1 - eos_slack:  # </s> chosen too early
                continue
            if seq[-1] != d.eos() and m < L:  # open hypotheses run all L steps
                continue
            prefix, score = [d.eos()], 0.0
            for tok in seq:
                score += float(step_lprobs(model, c, prefix)[tok])
                prefix.append(tok)
            toks = list(seq) if seq[-1] == d.eos() else list(seq) + [d.eos()]
            out[tuple(toks)] = score
    if L == 0:
        out[(d.eos(),)] = 0.0
    return sorted(out.items(), key=lambda kv: -kv[1])


def greedy_reference(model, c, L, eos_slack=0, inner_eos=False):
    d = model.decoder.dictionary
    prefix, scores = [d.eos()], []
    for i in range(L):
        lp = step_lprobs(model, c, prefix)
        if i < L - 1 - eos_slack and not inner_eos:
            lp[d.eos()] = -math.inf
        tok = int(lp.argmax())
        prefix.append(tok)
        scores.append(float(lp[tok]))
        if tok == d.eos() and not inner_eos:
            break
    if prefix[-1] != d.eos() or len(prefix) == 1:
        prefix.append(d.eos())
        scores.append(0.0)
    return prefix[1:], scores


def run(model, d, x, lengths, beam, nbest=1, eos_slack=0, inner_eos=False):
    gen = CifGenerator([model], d, beam_size=beam, nbest=nbest, eos_slack=eos_slack, inner_eos=inner_eos)
    return gen.generate([model], {"net_input": {"src_tokens": x, "src_lengths": lengths}})


@pytest.mark.parametrize("seed,eos_slack", [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)])
def test_greedy_matches_reference_loop(seed, eos_slack):
    d = make_dict(8)
    model = MockModel(d, seed=seed)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = 1.5  # </s> often the argmax: exercises the early-</s> rule
    x, lengths = make_batch([5, 0, 3, 7, 1], seed=seed)
    hypos = run(model, d, x, lengths, beam=1, eos_slack=eos_slack)
    for b in range(len(lengths)):
        ref_tokens, ref_scores = greedy_reference(model, x[b], int(lengths[b]), eos_slack)
        (h,) = hypos[b]
        assert h["tokens"].tolist() == ref_tokens
        assert h["tokens"][-1] == d.eos()
        torch.testing.assert_close(h["positional_scores"].double(), torch.tensor(ref_scores, dtype=torch.float64), atol=1e-4, rtol=0)
        assert h["score"] == pytest.approx(sum(ref_scores), abs=1e-4)


@pytest.mark.parametrize("seed,eos_slack,inner_eos", [(0, 0, False), (3, 0, False), (0, 1, False), (3, 1, False),
                                                    (0, 0, True), (3, 0, True)])
def test_exhaustive_beam_equals_brute_force(seed, eos_slack, inner_eos):
    """inner_eos: every hypothesis runs all L steps with </s> allowed at any of them."""
    d = make_dict(3)  # allowed tokens: </s>, <unk>, a, b, c
    model = MockModel(d, seed=seed)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = 1.0
    x, lengths = make_batch([3, 1, 2, 0], seed=seed)
    nbest = 4
    hypos = run(model, d, x, lengths, beam=5**3, nbest=nbest, eos_slack=eos_slack, inner_eos=inner_eos)
    for b in range(len(lengths)):
        ref = all_hypotheses(model, x[b], int(lengths[b]), eos_slack, inner_eos)[:nbest]
        got = [(tuple(h["tokens"].tolist()), h["score"]) for h in hypos[b]]
        assert [t for t, _ in got] == [t for t, _ in ref]
        for (_, s), (_, rs) in zip(got, ref):
            assert s == pytest.approx(rs, abs=1e-4)
    if inner_eos:  # the case is exercised
        assert any(d.eos() in h["tokens"].tolist()[:-1] for hs in hypos for h in hs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inner_eos_greedy_matches_reference_loop(seed):
    """inner_eos (a model trained with sentence joins): </s> competes at every step, and a chosen
    inner </s> does not end the hypothesis; the reference loop runs all L steps."""
    d = make_dict(8)
    model = MockModel(d, seed=seed)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = 3.0  # </s> often the argmax at inner steps
    x, lengths = make_batch([5, 0, 3, 7, 1], seed=seed)
    hypos = run(model, d, x, lengths, beam=1, inner_eos=True)
    inner = 0
    for b in range(len(lengths)):
        ref_tokens, ref_scores = greedy_reference(model, x[b], int(lengths[b]), inner_eos=True)
        (h,) = hypos[b]
        assert h["tokens"].tolist() == ref_tokens
        torch.testing.assert_close(h["positional_scores"].double(), torch.tensor(ref_scores, dtype=torch.float64), atol=1e-4, rtol=0)
        inner += ref_tokens[:-1].count(d.eos())
    assert inner > 0  # the case is exercised


def test_batch_equals_one_by_one():
    """Different lengths in one batch (utterances leave the batch at their own step count)."""
    d = make_dict(10)
    model = MockModel(d, seed=5)
    x, lengths = make_batch([6, 2, 0, 9, 4, 4], seed=5)
    batch = run(model, d, x, lengths, beam=4, nbest=3)
    for b in range(len(lengths)):
        L = int(lengths[b])
        alone = run(model, d, x[b : b + 1, : max(L, 1)], lengths[b : b + 1], beam=4, nbest=3)[0]
        assert [h["tokens"].tolist() for h in batch[b]] == [h["tokens"].tolist() for h in alone]
        assert [h["score"] for h in batch[b]] == pytest.approx([h["score"] for h in alone], abs=1e-5)


def test_steps_equal_fire_count():
    """One decoder step per CIF token; an utterance leaves the batch after its own last step."""
    d = make_dict(6)
    model = MockModel(d, seed=2)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = -100.0  # no early </s>: every utterance runs all its steps
    rows = []
    forward = model.decoder.forward
    model.decoder.forward = lambda prev, *a, **kw: (rows.append(prev.size(0)), forward(prev, *a, **kw))[1]
    lengths = [4, 7, 2, 0]
    x, lengths_t = make_batch(lengths, seed=2)
    hypos = run(model, d, x, lengths_t, beam=3)
    assert rows == [3 * sum(L > i for L in lengths) for i in range(max(lengths))]
    assert [len(h[0]["tokens"]) for h in hypos] == [L + 1 if L else 1 for L in lengths]


@pytest.mark.parametrize("beam,eos_slack", [(1, 0), (10, 0), (10, 1)])
def test_eos_loving_decoder_runs_all_steps(beam, eos_slack):
    """A decoder whose </s> probability is ~1 at every step: no hypothesis may end before its
    fire count minus one (minus eos_slack). The old rule returned empty transcripts here."""
    d = make_dict(7)
    model = MockModel(d, seed=7)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = 30.0
    lengths = [6, 1, 9, 3, 0]
    x, lengths_t = make_batch(lengths, seed=7)
    hypos = run(model, d, x, lengths_t, beam=beam, nbest=min(beam, 3), eos_slack=eos_slack)
    for L, utt in zip(lengths, hypos):
        assert utt
        for h in utt:
            toks = h["tokens"].tolist()
            assert toks[-1] == d.eos() and d.eos() not in toks[:-1]
            assert len(toks) - 1 >= max(L - 1 - eos_slack, 0), (L, toks)
            assert len(toks) - 1 <= L
        # </s> is ~certain, so the best hypothesis chooses it as early as the rule allows
        assert len(utt[0]["tokens"]) - 1 == max(L - 1 - eos_slack, 0)


def test_beam_not_below_greedy_and_sometimes_above():
    """Beam 10 never scores below greedy, and beats it on some utterances: a search that ignored
    --beam (greedy everywhere) would pass the first check alone."""
    strictly_better = 0
    for seed in range(10):
        d = make_dict(12)
        model = MockModel(d, seed=seed)
        x, lengths = make_batch([8, 5, 6], seed=seed)
        greedy = run(model, d, x, lengths, beam=1)
        beam = run(model, d, x, lengths, beam=10)
        for g, k in zip(greedy, beam):
            assert k[0]["score"] >= g[0]["score"] - 1e-5
            strictly_better += k[0]["score"] > g[0]["score"] + 1e-3
    assert strictly_better >= 3, strictly_better


def test_hypothesis_format():
    d = make_dict(6)
    model = MockModel(d, seed=4)
    x, lengths = make_batch([5, 3], seed=4)
    hypos = run(model, d, x, lengths, beam=4, nbest=4)
    for b, utt in enumerate(hypos):
        assert len(utt) == 4
        assert [h["score"] for h in utt] == sorted((h["score"] for h in utt), reverse=True)
        for h in utt:
            assert h["tokens"].dtype == torch.long and h["tokens"][-1] == d.eos()
            assert (h["tokens"][:-1] != d.eos()).all()
            assert len(h["positional_scores"]) == len(h["tokens"])
            assert h["score"] == pytest.approx(float(h["positional_scores"].sum()), abs=1e-4)
            assert h["alignment"] is None
            assert h["fires"].tolist() == list(range(int(lengths[b])))


@pytest.mark.parametrize("eos_slack,inner_eos", [(0, False), (1, False), (0, True)])
def test_nar_argmax(eos_slack, inner_eos):
    d = make_dict(5)
    model = MockModel(d, seed=6, autoregressive=False)
    with torch.no_grad():
        model.decoder.bias[d.eos()] = 2.0
    x, lengths = make_batch([6, 3, 0], seed=6)
    hypos = run(model, d, x, lengths, beam=5, eos_slack=eos_slack, inner_eos=inner_eos)
    for b in range(len(lengths)):
        L = int(lengths[b])
        eos_prefix = [d.eos()] * (L + 1)
        logits, _ = model.decoder(torch.tensor([eos_prefix[:L]], dtype=torch.long), x[b : b + 1, :L], None)
        lp = torch.log_softmax(logits[0], -1)
        lp[:, d.bos()] = lp[:, d.pad()] = -math.inf
        for i in range(0 if inner_eos else L - 1 - eos_slack):
            lp[i, d.eos()] = -math.inf
        ref = lp.argmax(-1).tolist()
        if inner_eos:  # all L steps, </s> appended unless the last step chose it
            ref = ref if ref and ref[-1] == d.eos() else ref + [d.eos()]
        else:
            ref = ref[: ref.index(d.eos()) + 1] if d.eos() in ref else ref + [d.eos()]
        (h,) = hypos[b]
        assert h["tokens"].tolist() == ref


def test_ensemble_rejected():
    d = make_dict(3)
    with pytest.raises(NotImplementedError, match="average"):
        CifGenerator([MockModel(d), MockModel(d)], d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    d = make_dict(10)
    model = MockModel(d, seed=7)
    x, lengths = make_batch([6, 2, 0, 9], seed=7)
    cpu = run(model, d, x, lengths, beam=4, nbest=2)
    gpu = run(model.cuda(), d, x.cuda(), lengths.cuda(), beam=4, nbest=2)
    for c, g in zip(cpu, gpu):
        assert [h["tokens"].tolist() for h in c] == [h["tokens"].tolist() for h in g]
        assert [h["score"] for h in c] == pytest.approx([h["score"] for h in g], abs=1e-4)


def build_real_model(decoder_type="autoregressive", vocab=20, seed=0):
    """cif_tiny with random weights (the real decoder: fairseq attention with incremental state)."""
    from types import SimpleNamespace

    from fairseq_hkd.models.cif_model import ARCHITECTURES, CifModel, CifModelConfig

    d = make_dict(vocab)
    torch.manual_seed(seed)
    cfg = CifModelConfig(**{**ARCHITECTURES["cif_tiny"], "decoder_type": decoder_type})
    return CifModel.build_model(cfg, SimpleNamespace(target_dictionary=d)).eval(), d


def real_cif_outputs(model, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    src = torch.randn(len(lengths), int(lengths.max()), 80, generator=g)
    with torch.no_grad():
        _, cif = model.forward_cif(model.forward_encoder(src, lengths))
    return cif.embeddings, cif.lengths


def test_real_decoder_batch_equals_one_by_one():
    """Incremental state reordering and batch shrinking with fairseq's attention caches."""
    model, d = build_real_model()
    emb, n = real_cif_outputs(model, [300, 90, 220, 160])
    assert len(set(n.tolist())) > 1
    gen = CifGenerator([model], d, beam_size=5, nbest=3)
    with torch.no_grad():
        batch = gen.beam_search(emb, n)
        for b in range(len(n)):
            alone = gen.beam_search(emb[b : b + 1, : int(n[b])], n[b : b + 1])
            w = alone.tokens.size(2)
            assert batch.lengths[b].tolist() == alone.lengths[0].tolist()
            assert batch.tokens[b, :, :w].tolist() == alone.tokens[0].tolist()
            assert (batch.tokens[b, :, w:] == d.pad()).all()
            torch.testing.assert_close(batch.scores[b], alone.scores[0], atol=1e-4, rtol=0)


def test_real_decoder_greedy_equals_full_recompute():
    model, d = build_real_model(seed=1)
    emb, n = real_cif_outputs(model, [200, 120], seed=1)
    gen = CifGenerator([model], d, beam_size=1)
    with torch.no_grad():
        res = gen.beam_search(emb, n)
        for b in range(len(n)):
            prefix = [d.eos()]
            for i in range(int(n[b])):
                logits, _ = model.decoder(torch.tensor([prefix]), emb[b : b + 1, : i + 1], None)
                lp = torch.log_softmax(logits[0, -1].double(), -1)
                lp[d.bos()] = lp[d.pad()] = -math.inf
                if i < int(n[b]) - 1:  # </s> only at the last CIF step
                    lp[d.eos()] = -math.inf
                prefix.append(int(lp.argmax()))
                if prefix[-1] == d.eos():
                    break
            ref = prefix[1:] + ([] if prefix[-1] == d.eos() and len(prefix) > 1 else [d.eos()])
            assert res.tokens[b, 0, : int(res.lengths[b, 0])].tolist() == ref


def test_real_nar_decoder_argmax():
    model, d = build_real_model("non_autoregressive", seed=2)
    emb, n = real_cif_outputs(model, [150, 100], seed=2)
    gen = CifGenerator([model], d, beam_size=3)
    with torch.no_grad():
        res = gen.nar_argmax(emb, n)
        mask = torch.arange(emb.size(1))[None, :] >= n[:, None]
        logits, _ = model.decoder(None, emb, mask)
    for b in range(len(n)):
        lp = torch.log_softmax(logits[b, : int(n[b])].double(), -1)
        lp[:, d.bos()] = lp[:, d.pad()] = -math.inf
        ref = lp.argmax(-1).tolist()
        ref = ref[: ref.index(d.eos()) + 1] if d.eos() in ref else ref + [d.eos()]
        assert res.tokens[b, 0, : int(res.lengths[b, 0])].tolist() == ref
