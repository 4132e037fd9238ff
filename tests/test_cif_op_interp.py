"""CIF Triton kernels under the Triton interpreter (CPU tensors, tiny shapes).

TRITON_INTERPRET=1 must be set before the kernels are defined, so this module only runs in
the subprocess that tests/test_cif_op_triton.py starts with that variable; collected in the
normal test run it skips. It re-runs the hand-computed cases of test_cif_op.py with
impl="triton", checks random inputs and gradients against the float64 loop, and the raw
kernels against the torch implementation.
"""
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs in a subprocess with TRITON_INTERPRET=1 (test_cif_op_triton.py)",
                allow_module_level=True)
pytest.importorskip("triton")

import test_cif_op as base  # noqa: E402  (module import: its tests are not re-collected)
from fairseq_hkd.ops.cif import cif, torch_impl  # noqa: E402
from fairseq_hkd.ops.cif import triton_kernels  # noqa: E402
from fairseq_hkd.ops.cif.op import cif_gather, cif_plan_triton  # noqa: E402
from fairseq_hkd.ops.cif.plan import cif_plan  # noqa: E402

IMPL = "triton"


@pytest.fixture(autouse=True)
def use_triton(monkeypatch):
    monkeypatch.setattr(base, "IMPL", IMPL)


@pytest.mark.parametrize("case", [
    base.test_dyadic_exact_hits_hand_computed,
    base.test_split_frame_remainder_rule,
    base.test_consecutive_fires_each_frame_is_a_token,
    base.test_all_zero_alpha_gives_no_tokens,
    base.test_alpha_out_of_range_is_clamped,
    base.test_padding_is_ignored_and_nan_safe,
    base.test_tail_hand_computed,
    base.test_threshold_below_one_equals_scaled_unit_threshold,
    base.test_max_tokens_overflow_rule,
    base.test_empty_inputs,
], ids=lambda f: f.__name__[5:])
def test_hand_cases(case):
    case()


@pytest.mark.parametrize("seed,threshold,tail", [
    (0, 1.0, None), (1, 1.0, 0.5), (2, 0.75, 0.3), (3, 1.25, None), (4, 0.5, 0.2),
])
def test_random_matches_reference(seed, threshold, tail):
    alpha, h, mask = base.random_case(2, 11 + seed, 3 + seed, seed)
    base.assert_matches_reference(IMPL, alpha, h, mask, threshold, tail)


def test_float32_and_bfloat16():
    alpha, h, mask = base.random_case(2, 13, 70, seed=9, dtype=torch.float32)  # C > BLOCK_C
    base.assert_matches_reference(IMPL, alpha, h, mask, 1.0, 0.5, atol=1e-5)
    a = cif(alpha, h.bfloat16(), mask, tail_threshold=0.5, impl=IMPL)
    b = cif(alpha, h.bfloat16().float(), mask, tail_threshold=0.5, impl="torch")
    assert a.embeddings.dtype == torch.bfloat16
    torch.testing.assert_close(a.embeddings.float(), b.embeddings, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_low_precision_grads_match_float64(dtype):
    """The tolerances the GPU test uses (test_cif_op.assert_low_precision_matches_float64: relative to
    each utterance's gradient scale), here with C > BLOCK_C and a tail token."""
    alpha, h, mask = base.random_case(3, 40, 70, seed=11, dtype=torch.float32)
    # The interpreter converts float32 to bfloat16 by truncation (triton/runtime/interpreter.py,
    # cast_impl: no rounding mode), one ulp = 2^-7 relative; GPUs round to nearest (2^-8, the default).
    rounding = 2.0 ** -7 if dtype == torch.bfloat16 else None
    base.assert_low_precision_matches_float64(IMPL, alpha, h.to(dtype), mask, 1.0, 0.5, rounding=rounding)


@pytest.mark.parametrize("threshold,tail", [(1.0, 0.4), (0.75, None)])
def test_grads_match_reference(threshold, tail):
    alpha, h, mask = base.random_case(2, 12, 3, seed=5)
    base.assert_grads_match_reference(IMPL, alpha, h, mask, threshold, tail)


def test_gradcheck():
    alpha, h, mask = base.random_case(1, 6, 2, seed=1)
    a, x = alpha.requires_grad_(), h.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, x: cif(a, x, mask, 1.0, 0.3, impl=IMPL).embeddings, (a, x)
    )


def test_kernels_match_torch_on_arbitrary_weights():
    # Raw gather with weights on both taps of non-firing frames (il == ir), which the plan
    # never produces but the op defines: exercises the backward's (wl + wr) branch.
    g = torch.Generator().manual_seed(0)
    B, T, C, N = 2, 9, 20, 5
    il = torch.sort(torch.randint(0, N, (B, T), generator=g), 1).values
    ir = torch.minimum(il + torch.randint(0, 2, (B, T), generator=g),
                       torch.nn.functional.pad(il[:, 1:], (0, 1), value=N - 1))
    h = torch.randn(B, T, C, generator=g)
    wl, wr = torch.rand(B, T, generator=g), torch.rand(B, T, generator=g)
    grad = torch.randn(B, N, C, generator=g)
    torch.testing.assert_close(triton_kernels.gather_forward(h, wl, wr, il, ir, N),
                               torch_impl.gather_forward(h, wl, wr, il, ir, N))
    for ours, ref in zip(triton_kernels.gather_backward(grad, h, wl, wr, il, ir),
                         torch_impl.gather_backward(grad, h, wl, wr, il, ir)):
        torch.testing.assert_close(ours, ref)


def test_opcheck():
    h, wl, wr, il, ir, n = base.gather_args(2, 7, 5, 4, seed=0)
    for t in (h, wl, wr):
        t.requires_grad_()
    torch.library.opcheck(cif_gather, (h, wl, wr, il, ir, n, IMPL))


@pytest.mark.parametrize("threshold,tail,max_tokens", [(1.0, 0.5, None), (0.75, None, 700)])
def test_plan_kernel_matches_torch_plan_over_chunks(threshold, tail, max_tokens):
    # T spans several PLAN_BLOCK_T chunks: carried prefix sums and the reverse pass
    alpha, _, mask = base.random_case(2, 2500, 1, seed=4)
    alpha = alpha.float()
    a1, a2 = alpha.clone().requires_grad_(), alpha.clone().requires_grad_()
    ref = cif_plan(a1, mask, threshold, tail, max_tokens, True)
    out = cif_plan_triton(a2, mask, threshold, tail, ref.num_tokens, False)
    names = ("idx_left", "idx_right", "fire_mask", "token_index", "lengths")
    for name, ours in zip(names, out[2:7]):
        assert torch.equal(ours, getattr(ref, name)), name
    torch.testing.assert_close(out[0].double(), ref.w_left, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[1].double(), ref.w_right, atol=1e-6, rtol=1e-6)
    g = torch.Generator().manual_seed(0)
    gl, gr = torch.randn(2, 2500, generator=g), torch.randn(2, 2500, generator=g)
    ((ref.w_left * gl.double()).sum() + (ref.w_right * gr.double()).sum()).backward()
    ((out[0] * gl).sum() + (out[1] * gr).sum()).backward()
    torch.testing.assert_close(a2.grad, a1.grad.float(), atol=1e-4, rtol=1e-4)


def test_plan_opcheck():
    alpha, _, mask = base.random_case(2, 9, 1, seed=3)
    args = (alpha.float().requires_grad_(), mask, 1.0, 0.5, 6, False)
    torch.library.opcheck(cif_plan_triton, args)
