"""The CPU training speed options: packed dropout masks and bf16 autocast of the forward pass.

Packed dropout is checked against its definition (int16 draws, threshold, scale) and against
binomial bounds; autocast against a float32 run of the same model: the CIF weights, fire
positions and the distillation terms must not change dtype or placement under bf16.
"""
import math

import pytest
import torch
import torch.nn as nn
from fairseq.modules.fairseq_dropout import FairseqDropout

from fairseq_hkd.compat import cpu_has_native_bf16
from fairseq_hkd.models.dropout import PackedDropout, packed_dropout, use_packed_dropout
from tests.test_model_cif import make_dict, padded_batch, small_model, tf_inputs


def test_packed_dropout_matches_its_definition():
    x = torch.randn(5, 7, 3)  # 105 elements: not a multiple of 4
    torch.manual_seed(11)
    y = packed_dropout(x, 0.1)
    torch.manual_seed(11)
    words = torch.empty((x.numel() + 2) // 3, dtype=torch.int64).random_().tolist()
    # the low three 16-bit fields of each word, as signed int16, lowest first
    u = [((w >> (16 * j)) & 0xFFFF) - (65536 if (w >> (16 * j)) & 0x8000 else 0) for w in words for j in range(3)]
    u = torch.tensor(u[: x.numel()]).view(x.shape)
    drop = round(0.1 * 65536)
    keep = u.long() + 32768 >= drop  # u uniform over 0..65535 after the shift
    expected = torch.where(keep, x * (65536 / (65536 - drop)), torch.zeros_like(x))
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_packed_dropout_rate_and_mean(p):
    torch.manual_seed(0)
    n = 400_000
    y = packed_dropout(torch.ones(n), p)
    dropped = int((y == 0).sum())
    sd = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 5 * sd, (dropped, n * p)
    assert abs(float(y.mean()) - 1.0) < 5 * sd / n / (1 - p) + 1e-3
    # every position of a draw's three fields drops at the same rate
    for j in range(3):
        r = float((y[j::3] == 0).float().mean())
        assert abs(r - p) < 5 * math.sqrt(p * (1 - p) / (n / 3)), (j, r)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - round(p * 65536))))


def test_packed_dropout_gradient_is_the_mask():
    torch.manual_seed(3)
    x = torch.randn(64, 9, requires_grad=True)
    y = packed_dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    scale = 65536 / (65536 - round(0.3 * 65536))
    expected = torch.where(y.detach() != 0, torch.full_like(y, scale), torch.zeros_like(y))
    torch.testing.assert_close(x.grad, expected)


def test_packed_dropout_module_eval_and_edge_cases():
    m = PackedDropout(0.5)
    x = torch.randn(10, 10)
    assert torch.equal(m.eval()(x), x)
    assert torch.equal(PackedDropout(0.0).train()(x), x)
    assert torch.count_nonzero(packed_dropout(x, 1.0)) == 0
    with pytest.raises(ValueError, match="dropout probability"):
        PackedDropout(1.5)


def test_use_packed_dropout_replaces_every_dropout_of_the_model():
    model = small_model(dropout_impl="torch", dropout=0.1, cif_dropout=0.1, decoder_dropout=0.1)
    before = [m for m in model.modules() if isinstance(m, (nn.Dropout, FairseqDropout)) and m.p > 0]
    assert len(before) > 10
    assert use_packed_dropout(model) == len(before)
    assert not [m for m in model.modules() if isinstance(m, (nn.Dropout, FairseqDropout)) and m.p > 0]
    packed = small_model(dropout_impl="packed", dropout=0.1, cif_dropout=0.1, decoder_dropout=0.1)
    assert sum(isinstance(m, PackedDropout) for m in packed.modules()) == len(before)
    # same parameters, same names: checkpoints load either way
    assert model.state_dict().keys() == packed.state_dict().keys()


def test_80ms_architectures_halve_the_frame_rate():
    from tests.test_model_cif import arch_config

    assert arch_config("cif_tiny").subsample_layers == 2
    for arch in ("cif_tiny_80ms", "cif_tiny_pool"):
        torch.manual_seed(0)
        from fairseq_hkd.models.cif_model import CifModel
        from tests.test_model_cif import _Task

        model = CifModel.build_model(arch_config(arch), _Task(make_dict()))
        assert model.encoder.downsample == 8
        assert model.encoder_output_lengths(torch.tensor([300, 17])).tolist() == [38, 3]


def test_bf16_autocast_keeps_cif_and_losses_in_float32():
    """Under CPU bf16 autocast: alpha and the CIF embeddings are float32 and fire where the float32
    forward with the same (bf16-rounded) encoder output fires; the loss terms are float32."""
    torch.manual_seed(0)
    d = make_dict()
    model = small_model(dropout=0.0, cif_dropout=0.0, decoder_dropout=0.0).eval()
    x, lengths = padded_batch([40, 31])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc = model.forward_encoder(x, lengths)
        alpha, out = model.forward_cif(enc)
    assert alpha.dtype == torch.float32 and out.embeddings.dtype == torch.float32
    h = enc["encoder_out"]
    alpha_ref, out_ref = model.cif(h.float(), enc["encoder_padding_mask"])
    torch.testing.assert_close(alpha, alpha_ref)
    assert torch.equal(out.fire_mask, out_ref.fire_mask)
    # a teacher-forced forward under autocast: decoder logits may be bf16, the losses are not
    target, prev = tf_inputs(d, [5, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net = model(x, lengths, prev, target_lengths=torch.tensor([5, 4]))
    assert net["decoder_logits"].dtype == torch.bfloat16  # the matmuls did run in bf16
    from fairseq_hkd.criterions import losses

    ce, _ = losses.label_smoothed_ce(net["decoder_logits"], target, 0.1, d.pad())
    assert ce.dtype == torch.float32


@pytest.mark.parametrize("chunked", [False, True])
def test_bf16_autocast_encoder_attention_softmax_in_float32(monkeypatch, chunked):
    """CPU autocast runs softmax in its input's dtype: the encoder's attention (fairseq's module in
    full context, ``rel_pos_attention`` under a chunk mask) must promote its scores itself, as
    fairseq's MultiheadAttention does, while its products still run in bf16."""
    torch.manual_seed(0)
    kwargs = dict(encoder_chunk_size=4) if chunked else {}
    model = small_model(dropout=0.0, cif_dropout=0.0, decoder_dropout=0.0, **kwargs).eval()
    x, lengths = padded_batch([40, 31])
    seen, outs = [], []
    softmax = torch.softmax

    def recording_softmax(t, *args, **kwargs):
        seen.append(t.dtype)
        return softmax(t, *args, **kwargs)

    monkeypatch.setattr(torch, "softmax", recording_softmax)
    for layer in model.encoder.layers:
        layer.self_attn.linear_out.register_forward_hook(lambda m, i, o: outs.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc = model.forward_encoder(x, lengths)
    n_layers = len(model.encoder.layers)
    assert outs == [torch.bfloat16] * n_layers  # the attention's products did run in bf16
    assert seen == [torch.float32] * n_layers, seen
    ref = model.forward_encoder(x, lengths)["encoder_out"]
    assert (enc["encoder_out"].float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_float32_softmax_attention_is_fairseqs_in_float32():
    """In float32 the swapped attention computes bit for bit what fairseq's module computes."""
    from fairseq.modules.espnet_multihead_attention import RelPositionMultiHeadedAttention

    torch.manual_seed(0)
    model = small_model(dropout=0.0, cif_dropout=0.0, decoder_dropout=0.0).eval()
    attn = model.encoder.layers[0].self_attn
    assert type(attn) is not RelPositionMultiHeadedAttention and isinstance(attn, RelPositionMultiHeadedAttention)
    B, H, T, dk = 2, attn.h, 7, attn.d_k
    value, scores = torch.randn(B, H, T, dk), torch.randn(B, H, T, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[1, 5:] = True
    for m in (mask, None):
        assert torch.equal(attn.forward_attention(value, scores, m),
                           RelPositionMultiHeadedAttention.forward_attention(attn, value, scores, m))
    # fp16 values (a --fp16 decode): the float32 weights are cast back for the product
    out = attn.half().forward_attention(value.half(), scores.half(), mask)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_task_autocast_modes(monkeypatch):
    """--autocast-bf16: no -> off; yes -> on (CPU); auto -> on exactly when the CPU has native bf16."""
    from types import SimpleNamespace

    from fairseq_hkd.tasks.cif_asr import CifAsrTask

    model = small_model()
    for mode, expected in (("no", False), ("yes", True), ("auto", cpu_has_native_bf16())):
        task = CifAsrTask.__new__(CifAsrTask)
        task.cfg, task._use_bf16 = SimpleNamespace(autocast_bf16=mode), None
        with task.training_autocast(model):
            assert torch.is_autocast_cpu_enabled() == expected, mode
            if expected:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_task_autocast_on_gpu(monkeypatch, bf16_gpu):
    """--autocast-bf16 on a GPU: yes -> CUDA bf16 autocast (fairseq 0.12's --bf16 means TPU), or a
    one-line error on a GPU without bf16; auto -> off (the CPU's rule). The model's device is faked."""
    from types import SimpleNamespace

    from fairseq_hkd.tasks.cif_asr import CifAsrTask

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    on_gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda"))]))
    for mode in ("yes", "auto", "no"):
        task = CifAsrTask.__new__(CifAsrTask)
        task.cfg, task._use_bf16 = SimpleNamespace(autocast_bf16=mode), None
        if mode == "yes" and not bf16_gpu:
            with pytest.raises(ValueError, match="does not support bf16; train with --fp16 or --amp"):
                task.training_autocast(on_gpu)
            continue
        ctx = task.training_autocast(on_gpu)
        assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
        assert task._use_bf16 == (mode == "yes"), mode


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
def test_amp_optimizer_keeps_fairseqs_cuda_autocast():
    """--amp: the task's train_step must keep fairseq's CUDA fp16 autocast (FairseqTask.train_step
    enables it for an AMPOptimizer); overriding train_step once dropped it."""
    from types import SimpleNamespace

    from fairseq.optim.amp_optimizer import AMPOptimizer

    from fairseq_hkd.tasks.cif_asr import CifAsrTask

    task = CifAsrTask.__new__(CifAsrTask)
    task.cfg, task._use_bf16 = SimpleNamespace(autocast_bf16="no"), None
    amp = AMPOptimizer.__new__(AMPOptimizer)
    ctx = task.training_autocast(small_model(), amp)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.float16
    assert not task.training_autocast(small_model(), None)._enabled
