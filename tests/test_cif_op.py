"""CIF op (torch path) against the float64 sequential loop and hand-computed cases.

The Triton kernels run the same checks under the interpreter in test_cif_op_triton.py;
the helpers here take the implementation name.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fairseq_hkd.ops.cif import cif, cif_reference
from fairseq_hkd.ops.cif.op import cif_gather

IMPL = "torch"


def random_case(B, T, C, seed, dtype=torch.float64, pad=True):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(B, T, generator=g, dtype=dtype)
    h = torch.randn(B, T, C, generator=g, dtype=dtype)
    mask = None
    if pad and T > 1:
        lens = torch.randint(1, T + 1, (B,), generator=g)
        mask = torch.arange(T)[None, :] >= lens[:, None]
    return alpha, h, mask


def assert_matches_reference(impl, alpha, h, mask, threshold=1.0, tail=None, atol=1e-10):
    out = cif(alpha, h, mask, threshold, tail, impl=impl)
    tokens, fire_mask, token_index = cif_reference(alpha, h, mask, threshold, tail)
    assert out.lengths.tolist() == [len(t) for t in tokens]
    assert out.embeddings.shape[1] == max([len(t) for t in tokens] + [0])
    assert torch.equal(out.fire_mask, fire_mask)
    assert torch.equal(out.token_index, token_index)
    for b, ref in enumerate(tokens):
        emb = out.embeddings[b].to(torch.float64)
        torch.testing.assert_close(emb[: len(ref)], ref, atol=atol, rtol=atol)
        assert not emb[len(ref):].any(), "embeddings beyond lengths must be zero"
    return out


def assert_grads_match_reference(impl, alpha, h, mask, threshold=1.0, tail=None):
    """Gradients of a random linear functional of the tokens, ours vs autograd of the loop."""
    a1, h1 = alpha.clone().requires_grad_(), h.clone().requires_grad_()
    a2, h2 = alpha.clone().requires_grad_(), h.clone().requires_grad_()
    out = cif(a1, h1, mask, threshold, tail, impl=impl)
    weights = torch.randn_like(out.embeddings)
    (out.embeddings * weights).sum().backward()
    tokens, _, _ = cif_reference(a2, h2, mask, threshold, tail)
    ref = sum((t * weights[b, : len(t)]).sum() for b, t in enumerate(tokens) if len(t))
    if torch.is_tensor(ref):
        ref.backward()
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-9, rtol=1e-9)


# Low-precision inputs against the float64 path on the same values. Tolerances, from the arithmetic, per
# utterance relative to its scale (the largest |reference| value of that utterance and tensor):
# - embeddings and grad_h come back in h's dtype, rounded to nearest: relative error <= u (2^-8 for
#   bfloat16, 2^-24 for float32);
# - all sums run in float32 (the plan in float64): dot products over the C channels and sums over a
#   few frames, whose rounding grows like 2^-24 * sqrt(C) of the scale (measured on the CPU path:
#   <= 3.2e-7 for C <= 1000, T <= 1000) -> LOW_PRECISION_ACC = 2e-5 of the scale, 60x the measurement;
# - alpha's gradient is float32 for every h dtype: LOW_PRECISION_ACC alone, whatever h's dtype (the
#   bf16 rounding of h and of the output gradient is in the reference too).
# A 1 % error in one frame's gradient is ~500x that tolerance; the earlier GPU check allowed
# 30 * sqrt(C) absolute for bf16 (9.5 at C = 1000, 2 % of the scale) and let it pass, as it let pass
# a Triton plan backward without the tail term dL/dr (0.10 absolute, 2e-4 of the scale, at B, T, C =
# 3, 77, 1000 under the interpreter).
LOW_PRECISION_ACC = 2e-5
ROUNDING = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8}


def assert_low_precision_matches_float64(impl, alpha, h, mask, threshold=1.0, tail=None, seed=1, rounding=None):
    """cif(float32 alpha, float32|bfloat16 h) forward and backward (a random output gradient) against
    the float64 torch path on the same values: h upcast exactly, the output gradient rounded to h's
    dtype as autograd rounds it on the way in. The float64 path equals the loop to 1e-9 (above).
    ``rounding``: relative error of the conversion to h's dtype (default ROUNDING, round to nearest)."""
    a, x = alpha.float().clone().requires_grad_(), h.clone().requires_grad_()
    out = cif(a, x, mask, threshold, tail, impl=impl)
    grad = torch.randn(out.embeddings.shape, generator=torch.Generator().manual_seed(seed)).to(h.device)
    out.embeddings.float().backward(grad)

    def f64(t):
        return t.detach().cpu().double()

    ra, rx = f64(alpha.float()).requires_grad_(), f64(h).requires_grad_()
    ref = cif(ra, rx, None if mask is None else mask.cpu(), threshold, tail, impl="torch")
    ref.embeddings.backward(f64(grad.to(h.dtype)))
    assert torch.equal(out.lengths.cpu(), ref.lengths) and torch.equal(out.fire_mask.cpu(), ref.fire_mask)
    u = ROUNDING[h.dtype] if rounding is None else rounding
    for name, got, want, rel in (("embeddings", out.embeddings, ref.embeddings, u), ("grad_h", x.grad, rx.grad, u),
                                 ("grad_alpha", a.grad, ra.grad, 0.0)):
        assert got.dtype == (torch.float32 if name == "grad_alpha" else h.dtype), name
        scale = want.abs().amax(dim=tuple(range(1, want.dim())), keepdim=True)
        excess = (f64(got) - want).abs() - (LOW_PRECISION_ACC * scale + rel * want.abs())
        worst = int(excess.argmax())
        assert excess.max() <= 0, (
            f"{impl} {h.dtype} {name}: error {float((f64(got) - want).abs().flatten()[worst]):.3g} at flat index "
            f"{worst} exceeds {LOW_PRECISION_ACC} x scale {scale.flatten().tolist()} + {rel} x |reference|")


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 40),
    C=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    threshold=st.sampled_from([1.0, 0.75, 0.5, 1.25, 0.9]),
    tail=st.sampled_from([None, 0.5, 0.2]),
)
def test_random_matches_reference(B, T, C, seed, threshold, tail):
    alpha, h, mask = random_case(B, T, C, seed)
    assert_matches_reference(IMPL, alpha, h, mask, threshold, tail)


@pytest.mark.parametrize("threshold,tail", [(1.0, None), (1.0, 0.5), (0.75, 0.3)])
def test_float32_matches_reference(threshold, tail):
    alpha, h, mask = random_case(4, 60, 16, seed=3, dtype=torch.float32)
    out = assert_matches_reference(IMPL, alpha, h, mask, threshold, tail, atol=1e-5)
    assert out.embeddings.dtype == torch.float32


def test_dyadic_exact_hits_hand_computed():
    # running sums 0.5, 1.0 (exact hit), 1.25, 2.0 (exact hit), 2.75, 3.0 (exact hit)
    alpha = torch.tensor([[0.5, 0.5, 0.25, 0.75, 0.75, 0.25]])
    h = torch.eye(6).unsqueeze(0)
    out = cif(alpha, h, impl=IMPL)
    assert out.lengths.tolist() == [3]
    assert out.fire_mask[0].tolist() == [False, True, False, True, False, True]
    assert out.token_index[0].tolist() == [0, 0, 1, 1, 2, 2]
    expected = torch.tensor([
        [0.5, 0.5, 0, 0, 0, 0],
        [0, 0, 0.25, 0.75, 0, 0],
        [0, 0, 0, 0, 0.75, 0.25],
    ])
    assert torch.equal(out.embeddings[0], expected)
    assert_matches_reference(IMPL, alpha.double(), h.double(), None)


def test_split_frame_remainder_rule():
    # 0.75 + 0.5 crosses 1 inside frame 1: token 0 takes beta - a = 0.25, token 1 starts with 0.25
    alpha = torch.tensor([[0.75, 0.5, 0.75]])
    h = torch.eye(3).unsqueeze(0)
    out = cif(alpha, h, impl=IMPL)
    assert out.lengths.tolist() == [2]
    assert torch.equal(out.embeddings[0], torch.tensor([[0.75, 0.25, 0], [0, 0.25, 0.75]]))


def test_consecutive_fires_each_frame_is_a_token():
    alpha = torch.ones(2, 7)
    h = torch.randn(2, 7, 3)
    out = cif(alpha, h, impl=IMPL)
    assert out.lengths.tolist() == [7, 7]
    assert out.fire_mask.all()
    torch.testing.assert_close(out.embeddings, h)


def test_all_zero_alpha_gives_no_tokens():
    alpha = torch.zeros(2, 5, requires_grad=True)
    h = torch.randn(2, 5, 4, requires_grad=True)
    for tail in (None, 0.5):
        out = cif(alpha, h, tail_threshold=tail, impl=IMPL)
        assert out.lengths.tolist() == [0, 0]
        assert out.embeddings.shape == (2, 0, 4)
        assert not out.fire_mask.any()
        assert out.token_index.eq(0).all()
    out = cif(alpha, h, max_tokens=3, impl=IMPL)
    assert out.embeddings.shape == (2, 3, 4) and not out.embeddings.any()


def test_alpha_out_of_range_is_clamped():
    h = torch.randn(1, 4, 3, dtype=torch.float64)
    wild = torch.tensor([[1.7, 3.0, -0.4, 0.5]], dtype=torch.float64)
    tame = torch.tensor([[1.0, 1.0, 0.0, 0.5]], dtype=torch.float64)
    a, b = cif(wild, h, tail_threshold=0.5, impl=IMPL), cif(tame, h, tail_threshold=0.5, impl=IMPL)
    assert a.lengths.tolist() == [3]
    torch.testing.assert_close(a.embeddings, b.embeddings)
    # below 1, alpha is clamped to the threshold: one fire per frame at most
    c = cif(torch.tensor([[0.9, 0.9]]), torch.ones(1, 2, 1), threshold=0.5, impl=IMPL)
    assert c.lengths.tolist() == [2] and c.fire_mask.all()


def test_padding_is_ignored_and_nan_safe():
    alpha, h, _ = random_case(1, 12, 5, seed=7, pad=False)
    long_alpha = torch.cat([alpha, torch.full((1, 6), float("nan"), dtype=alpha.dtype)], 1)
    long_h = torch.cat([h, torch.full((1, 6, 5), float("nan"), dtype=h.dtype)], 1)
    mask = torch.zeros(1, 18, dtype=torch.bool)
    mask[:, 12:] = True
    a1, h1 = long_alpha.clone().requires_grad_(), long_h.clone().requires_grad_()
    out = cif(a1, h1, mask, tail_threshold=0.3, impl=IMPL)
    ref = cif(alpha, h, None, tail_threshold=0.3, impl=IMPL)
    torch.testing.assert_close(out.embeddings, ref.embeddings)
    assert out.token_index[0, 12:].eq(-1).all() and not out.fire_mask[0, 12:].any()
    out.embeddings.sum().backward()
    assert torch.isfinite(a1.grad).all() and torch.isfinite(h1.grad).all()
    assert not a1.grad[:, 12:].any() and not h1.grad[:, 12:].any()


def test_tail_hand_computed():
    alpha = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    assert cif(alpha, h, impl=IMPL).lengths.tolist() == [0]
    assert cif(alpha, h, tail_threshold=0.8, impl=IMPL).lengths.tolist() == [0]
    out = cif(alpha, h, tail_threshold=0.75, impl=IMPL)  # residual 0.75 >= 0.75: emitted
    assert out.lengths.tolist() == [1]
    expected = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)  # state 0.75 renormalised
    torch.testing.assert_close(out.embeddings[0, 0], expected)


def test_threshold_below_one_equals_scaled_unit_threshold():
    alpha, h, mask = random_case(3, 30, 4, seed=11)
    beta = 0.75
    alpha = alpha * beta  # stay below the clamp so the identity holds exactly
    a = cif(alpha, h, mask, threshold=beta, tail_threshold=0.5 * beta, impl=IMPL)
    b = cif(alpha / beta, h, mask, threshold=1.0, tail_threshold=0.5, impl=IMPL)
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.fire_mask, b.fire_mask)
    torch.testing.assert_close(a.embeddings, beta * b.embeddings)


def test_scaled_alphas_give_exactly_target_length_tokens():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        T = int(torch.randint(20, 300, (), generator=g))
        alpha = torch.sigmoid(torch.randn(8, T, generator=g))
        target = torch.randint(1, T // 4, (8,), generator=g)
        scaled = alpha * (target / (alpha.sum(1) + 1e-8))[:, None]  # float32, sum ~ S
        out = cif(scaled, torch.randn(8, T, 4, generator=g), tail_threshold=0.5,
                  max_tokens=int(target.max()), impl=IMPL)
        assert torch.equal(out.lengths, target)


def test_float64_cumsum_keeps_long_inputs_exact():
    # float32 cumsum drifts by whole fires at this length; the plan accumulates in float64
    g = torch.Generator().manual_seed(5)
    alpha = torch.rand(1, 8000, generator=g)
    h = torch.ones(1, 8000, 1)
    out = cif(alpha, h, impl=IMPL)
    _, fire_mask, _ = cif_reference(alpha, h)
    assert torch.equal(out.fire_mask, fire_mask)


def test_max_tokens_overflow_rule():
    alpha = torch.ones(2, 5)
    h = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="max_tokens=3"):
        cif(alpha, h, max_tokens=3, impl=IMPL)
    out = cif(alpha, h, max_tokens=3, allow_overflow=True, impl=IMPL)
    assert out.lengths.tolist() == [5, 5]  # full counts: the overflow stays visible
    torch.testing.assert_close(out.embeddings, h[:, :3])
    out = cif(alpha, h, max_tokens=7, impl=IMPL)
    torch.testing.assert_close(out.embeddings[:, :5], h)
    assert not out.embeddings[:, 5:].any()


@pytest.mark.parametrize("threshold,tail", [(1.0, None), (1.0, 0.3), (0.75, 0.2), (1.25, None)])
def test_gradcheck(threshold, tail):
    alpha, h, mask = random_case(2, 9, 3, seed=1)
    a, hh = alpha.requires_grad_(), h.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, hh: cif(a, hh, mask, threshold, tail, impl=IMPL).embeddings, (a, hh)
    )


@pytest.mark.parametrize("threshold,tail", [(1.0, None), (1.0, 0.4), (0.75, 0.2)])
def test_grads_match_reference(threshold, tail):
    alpha, h, mask = random_case(3, 25, 4, seed=2)
    assert_grads_match_reference(IMPL, alpha, h, mask, threshold, tail)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T,C,tail", [(3, 77, 1000, 0.5), (4, 300, 64, None)])
def test_low_precision_matches_float64(B, T, C, tail, dtype):
    alpha, h, mask = random_case(B, T, C, seed=7, dtype=torch.float32)
    assert_low_precision_matches_float64(IMPL, alpha, h.to(dtype), mask, 1.0, tail)


def gather_args(B, T, C, N, seed, dtype=torch.float32, device="cpu"):
    alpha, h, _ = random_case(B, T, C, seed, dtype=dtype, pad=False)
    from fairseq_hkd.ops.cif.plan import cif_plan

    plan = cif_plan(alpha, None, 1.0, 0.5, N, True)
    return (h.to(device), plan.w_left.to(dtype).to(device), plan.w_right.to(dtype).to(device),
            plan.idx_left.to(device), plan.idx_right.to(device), plan.num_tokens)


def test_opcheck():
    h, wl, wr, il, ir, n = gather_args(2, 13, 5, 4, seed=0)
    for t in (h, wl, wr):
        t.requires_grad_()
    torch.library.opcheck(cif_gather, (h, wl, wr, il, ir, n, IMPL))


def test_gather_op_gradcheck_float64():
    """The cif_gather custom op (torch impl: what the Triton path composes, and what
    torch.compile sees) against finite differences, with arbitrary weights."""
    h, wl, wr, il, ir, n = gather_args(2, 11, 3, 5, seed=4, dtype=torch.float64)
    wl, wr = torch.randn_like(wl), torch.randn_like(wr)  # not only plan-shaped weights
    assert torch.autograd.gradcheck(
        lambda h, wl, wr: cif_gather(h, wl, wr, il, ir, n, IMPL),
        (h.requires_grad_(), wl.requires_grad_(), wr.requires_grad_()),
    )


@pytest.mark.parametrize("threshold,tail,max_tokens", [(1.0, None, None), (1.0, 0.5, 30),
                                                       (0.75, 0.2, 4)])
def test_fused_cpu_path_equals_plan_plus_gather_op(threshold, tail, max_tokens):
    """cif(impl="torch") runs plan + gather as one autograd node; the same maths through
    cif_plan and the cif_gather custom op (two nodes) must give the same values and grads."""
    from fairseq_hkd.ops.cif.plan import cif_plan

    alpha, h, mask = random_case(3, 40, 5, seed=6)
    a1, h1 = alpha.clone().requires_grad_(), h.clone().requires_grad_()
    a2, h2 = alpha.clone().requires_grad_(), h.clone().requires_grad_()
    out = cif(a1, h1, mask, threshold, tail, max_tokens, allow_overflow=True, impl=IMPL)
    plan = cif_plan(a2, mask, threshold, tail, max_tokens, True)
    emb = cif_gather(h2.masked_fill(mask.unsqueeze(-1), 0.0), plan.w_left, plan.w_right,
                     plan.idx_left, plan.idx_right, max(plan.num_tokens, 1), IMPL)
    emb = emb[:, : plan.num_tokens]
    torch.testing.assert_close(out.embeddings, emb, atol=1e-12, rtol=1e-12)
    assert torch.equal(out.lengths, plan.lengths)
    assert torch.equal(out.fire_mask, plan.fire_mask)
    assert torch.equal(out.token_index, plan.token_index)
    weights = torch.randn_like(emb)
    (out.embeddings * weights).sum().backward()
    (emb * weights).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-12, rtol=1e-12)


def test_impl_selection_and_input_errors(monkeypatch):
    import fairseq_hkd.ops.cif as cif_module

    alpha, h, _ = random_case(1, 6, 2, seed=0, pad=False)
    calls = []
    real = cif_module._reference_output
    monkeypatch.setattr(cif_module, "_reference_output", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("FAIRSEQ_HKD_CIF_IMPL", "reference")
    cif(alpha, h)
    assert calls == [1]
    cif(alpha, h, impl="torch")  # the argument wins over the environment
    assert calls == [1]
    monkeypatch.setenv("FAIRSEQ_HKD_CIF_IMPL", "bogus")
    with pytest.raises(ValueError, match="FAIRSEQ_HKD_CIF_IMPL"):
        cif(alpha, h)
    with pytest.raises(ValueError, match=r"alpha \[B, T\]"):
        cif(alpha[0], h, impl=IMPL)
    with pytest.raises(ValueError, match="padding_mask"):
        cif(alpha, h, (alpha > 0.5).long(), impl=IMPL)
    with pytest.raises(ValueError, match="threshold"):
        cif(alpha, h, threshold=0.0, impl=IMPL)


def test_empty_inputs():
    out = cif(torch.zeros(2, 0), torch.zeros(2, 0, 3), tail_threshold=0.5, impl=IMPL)
    assert out.lengths.tolist() == [0, 0] and out.embeddings.shape == (2, 0, 3)
    assert out.fire_mask.shape == (2, 0) and out.token_index.shape == (2, 0)
    out = cif(torch.zeros(0, 4), torch.zeros(0, 4, 3), impl=IMPL)
    assert out.embeddings.shape == (0, 0, 3)
