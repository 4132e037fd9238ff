"""CIF model: exact lengths, padding invariance, the scaling rule, decoder causality and
incremental decoding, the DESIGN.md output contract, architecture sizes."""
import argparse
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

from fairseq_hkd.models.cif_decoder import CifDecoder
from fairseq_hkd.models.cif_middleware import CifMiddleware, scale_alpha
from fairseq_hkd.errors import UserError
from fairseq_hkd.models.cif_model import ARCHITECTURES, CifModel, CifModelConfig, check_options
from fairseq_hkd.models.conformer_encoder import ConformerEncoder
from fairseq_hkd.ops.cif import cif as cif_op

SMALL = dict(subsample_channels=4, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
             encoder_layers=2, depthwise_conv_kernel_size=5, decoder_embed_dim=16, decoder_ffn_embed_dim=32,
             decoder_attention_heads=2, decoder_layers=2, input_feat_dim=20)


class _Task:
    def __init__(self, dictionary):
        self.target_dictionary = dictionary


def make_dict(n_symbols=8) -> Dictionary:
    d = Dictionary()
    for i in range(n_symbols):
        d.add_symbol(chr(ord("a") + i))
    return d


def arch_config(arch: str, **overrides) -> CifModelConfig:
    """The config fairseq builds for --arch (unset options None, then the architecture fills them)."""
    ns = argparse.Namespace(**{f.name: None for f in dataclasses.fields(CifModelConfig)})
    ns.share_decoder_input_output_embed = False
    ns.__dict__.update(overrides)
    ARCH_CONFIG_REGISTRY[arch](ns)
    return CifModelConfig(**vars(ns))


def small_model(seed=0, **overrides) -> CifModel:
    torch.manual_seed(seed)
    return CifModel.build_model(arch_config("cif_tiny", **{**SMALL, **overrides}), _Task(make_dict()))


def favour_eos(model, bias: float = 2.0) -> None:
    """Give the decoder's output projection a bias of ``bias`` on </s> (else 0), so that </s> is often
    the best token and inner ones occur (decoding with sentence boundaries)."""
    proj = model.decoder.output_projection
    biased = torch.nn.Linear(proj.in_features, proj.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(proj.weight)
        biased.bias.zero_()
        biased.bias[model.decoder.dictionary.eos()] = bias
    model.decoder.output_projection = biased


def padded_batch(lengths, dim=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x, torch.tensor(lengths)


def tf_inputs(dictionary, target_lengths, seed=0):
    """Random targets [B, S] ending in </s> and the matching prev_output_tokens."""
    g = torch.Generator().manual_seed(seed)
    B, S = len(target_lengths), max(target_lengths)
    target = torch.full((B, S), dictionary.pad())
    prev = torch.full((B, S), dictionary.pad())
    for i, n in enumerate(target_lengths):
        y = torch.randint(dictionary.nspecial, len(dictionary), (n - 1,), generator=g)
        target[i, : n - 1], target[i, n - 1] = y, dictionary.eos()
        prev[i, 0], prev[i, 1:n] = dictionary.eos(), y
    return target, prev


# 1. encoder lengths ----------------------------------------------------------------------------
@pytest.mark.parametrize("conv_layers,pool_after", [(1, []), (1, [1, 2]), (2, []), (2, [2])])
def test_encoder_lengths_are_exact(conv_layers, pool_after):
    torch.manual_seed(0)
    enc = ConformerEncoder(20, 4, conv_layers, 16, 32, 2, 2, 5, pool_after, 0.0).eval()
    lengths = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31]
    for n in lengths:  # alone (no padding): the tensor's own size is the truth
        x, L = padded_batch([n])
        out = enc(x, L)
        assert out["encoder_out"].shape[1] == int(out["encoder_lengths"][0]) == int(enc.output_lengths(L)[0]), n
    x, L = padded_batch(lengths)
    out = enc(x, L)
    alone = [enc(*padded_batch([n]))["encoder_out"].shape[1] for n in lengths]
    assert out["encoder_lengths"].tolist() == alone
    mask = out["encoder_padding_mask"]
    assert mask.shape == out["encoder_out"].shape[:2]
    assert (~mask).sum(1).tolist() == alone
    assert (out["encoder_out"][mask] == 0).all()


@pytest.mark.parametrize("layers,bias", [(1, True), (3, True), (2, False)])
def test_subsampler_equals_masking_every_conv_output(layers, bias):
    """The subsampler masks its last conv's padded frames after the projection (cheaper); the
    definition zeroes every conv's padded frames before it: same outputs (padded frames too) and
    gradients, float64."""
    from fairseq_hkd.models.conformer_encoder import Conv2dSubsampler, lengths_to_padding_mask, subsampled_lengths

    torch.manual_seed(0)
    sub = Conv2dSubsampler(20, 4, 16, layers).double()
    if not bias:
        sub.out.bias = None
    x, L = padded_batch([37, 20, 9, 1])
    x = x.double()

    def reference(x):
        y, lengths = x.unsqueeze(1), L
        for conv in sub.convs:
            y = torch.relu(conv(y))
            lengths = subsampled_lengths(lengths, n_convs=1)
            y = y.masked_fill(lengths_to_padding_mask(lengths, y.size(2))[:, None, :, None], 0.0)
        b, c, t, f = y.shape
        return sub.out(y.permute(2, 0, 1, 3).reshape(t, b, c * f)), lengths

    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    (got, got_len), (ref, ref_len) = sub(xs[0], L), reference(xs[1])
    assert torch.equal(got_len, ref_len)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(ref)
    grads = []
    for out, inp in ((got, xs[0]), (ref, xs[1])):
        sub.zero_grad()
        (out * w).sum().backward()
        grads.append([inp.grad] + [p.grad.clone() for p in sub.parameters()])
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_encoder_output_does_not_depend_on_batch_padding():
    torch.manual_seed(0)
    enc = ConformerEncoder(20, 4, 1, 16, 32, 2, 3, 5, [1, 2], 0.1).eval()
    x, L = padded_batch([45, 23, 9, 30])
    out = enc(x, L)
    for i, n in enumerate(L.tolist()):
        alone = enc(x[i : i + 1, :n], L[i : i + 1])["encoder_out"][0]
        torch.testing.assert_close(out["encoder_out"][i, : alone.size(0)], alone, atol=2e-5, rtol=1e-4)


def test_ctc_sees_exact_lengths_after_subsampling_and_pooling():
    """CTC on a padded batch equals CTC on each utterance alone, with frames counted by hand:
    one conv (ceil(T/2)) and two poolings (ceil again, twice)."""
    model = small_model(subsample_layers=1, encoder_pool_after="1,2").eval()
    lengths = [61, 40, 17]
    x, L = padded_batch(lengths)
    target, prev = tf_inputs(model.decoder.dictionary, [3, 2, 2])
    enc = model.forward_encoder(x, L)
    by_hand = [-(-(-(-(-(-n // 2)) // 2)) // 2) for n in lengths]  # ceil thrice
    assert enc["encoder_lengths"].tolist() == by_hand == [8, 5, 3]
    assert model.encoder_output_lengths(L).tolist() == by_hand
    logits = model.forward_ctc(enc)
    assert logits.shape[:2] == enc["encoder_out"].shape[:2]
    for i, n in enumerate(lengths):
        alone = model.forward_ctc(model.forward_encoder(x[i : i + 1, :n], L[i : i + 1]))
        assert alone.shape[1] == by_hand[i]
        torch.testing.assert_close(logits[i, : by_hand[i]], alone[0], atol=2e-5, rtol=1e-4)


# 2. CIF middleware ----------------------------------------------------------------------------
def test_scaled_alpha_sums_to_target_length_and_fires_exactly_s_tokens():
    torch.manual_seed(0)
    mid = CifMiddleware(16, dropout=0.0).eval()
    B, T = 5, 40
    h = torch.randn(B, T, 16)
    frames = torch.tensor([40, 33, 25, 12, 7])
    pad = torch.arange(T)[None] >= frames[:, None]
    h = h.masked_fill(pad[..., None], 0.0)
    S = torch.tensor([17, 3, 25, 6, 1])
    alpha, out = mid(h, pad, target_lengths=S)
    assert alpha.dtype == torch.float32 and (alpha[pad] == 0).all()
    assert ((alpha > 0) & (alpha < 1))[~pad].all()
    torch.testing.assert_close(scale_alpha(alpha, S).sum(1), S.float())
    assert out.lengths.tolist() == S.tolist()
    assert out.embeddings.shape == (B, int(S.max()), 16)
    # the middleware integrates the *scaled* weights with the 0.5 tail (checked against the float64 loop)
    ref = cif_op(scale_alpha(alpha, S).double(), h.double(), pad, threshold=1.0, tail_threshold=0.5, impl="reference")
    torch.testing.assert_close(out.embeddings.double(), ref.embeddings, atol=1e-5, rtol=1e-5)
    # without targets the raw weights decide N (inference)
    _, free = mid(h, pad)
    ref_free = cif_op(alpha.double(), h.double(), pad, threshold=1.0, tail_threshold=0.5, impl="reference")
    assert free.lengths.tolist() == ref_free.lengths.tolist()


def test_scale_alpha_caps_frames_at_one_and_keeps_the_sum():
    alpha = torch.tensor([[0.2, 0.9, 0.3, 0.1, 0.0], [0.5, 0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4, 0.0]])
    S = torch.tensor([3, 2, 2])
    scaled = scale_alpha(alpha, S)
    torch.testing.assert_close(scaled.sum(1), S.float())
    # row 0: the paper's rule gives 0.9 * 3 / 1.5 = 1.8 > 1: that frame is capped, the rest share 2
    torch.testing.assert_close(scaled[0], torch.tensor([0.2 * 2 / 0.6, 1.0, 0.3 * 2 / 0.6, 0.1 * 2 / 0.6, 0.0]))
    # rows without overflow: exactly alpha * S / (sum + 1e-8)
    torch.testing.assert_close(scaled[1:], alpha[1:] * S[1:, None] / (alpha[1:].sum(1, keepdim=True) + 1e-8))
    assert (scaled <= 1.0).all()


def test_scale_alpha_fills_the_room_left_by_capped_frames_exactly():
    """A peaky model: fire frames at 1, the rest ~1e-9 (the paper's eps of 1e-8 would swamp them and
    the row would carry S - 0.6 instead of S). S = 4 with three frames at 1: the free frames share the
    one unit left in proportion, 1/3 and 2/3 (by hand); CIF then fires exactly 4 tokens. A row whose
    free weights are all 0 cannot be scaled up: it keeps its capped frames and the middleware reports it."""
    alpha = torch.tensor([[1.0, 1e-9, 1.0, 2e-9, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    scaled = scale_alpha(alpha, torch.tensor([4, 3]))
    torch.testing.assert_close(scaled[0], torch.tensor([1.0, 1 / 3, 1.0, 2 / 3, 1.0, 0.0]))
    torch.testing.assert_close(scaled[1], torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    h = torch.randn(1, 6, 4)
    out = cif_op(scaled[:1], h, None, threshold=1.0, tail_threshold=0.5, max_tokens=4)
    assert out.lengths.tolist() == [4]


def test_too_many_targets_for_the_frames_raises():
    mid = CifMiddleware(8, dropout=0.0)
    h = torch.randn(1, 4, 8)
    with pytest.raises(RuntimeError, match="CIF fired .* tokens for utterance 0 .* target has 6"):
        mid(h, None, target_lengths=torch.tensor([6]))  # 4 frames hold at most 4 units of weight


# 3. decoders ----------------------------------------------------------------------------------
def _decoder(autoregressive=True, seed=0):
    torch.manual_seed(seed)
    return CifDecoder(make_dict(), 12, 16, 32, 2, 2, 0.1, 0.1, 0.1, autoregressive=autoregressive).eval()


def test_decoder_is_causal():
    dec = _decoder()
    target, prev = tf_inputs(dec.dictionary, [7, 7])
    c = torch.randn(2, 7, 12)
    logits, extra = dec(prev, c)
    k = 3
    prev2, c2 = prev.clone(), c.clone()
    prev2[:, k + 1 :] = dec.dictionary.nspecial + 1
    c2[:, k + 1 :] += 1.0
    logits2, extra2 = dec(prev2, c2)
    torch.testing.assert_close(logits2[:, : k + 1], logits[:, : k + 1])
    torch.testing.assert_close(extra2["states"][:, : k + 1], extra["states"][:, : k + 1])
    assert (logits2[:, k + 1 :] - logits[:, k + 1 :]).abs().amax() > 1e-3  # the future did change


def test_incremental_decoding_equals_full_decoding_with_beam_reordering():
    dec = _decoder()
    target, prev = tf_inputs(dec.dictionary, [6, 6, 6], seed=1)
    c = torch.randn(3, 6, 12)
    state = {}
    steps = []
    for i in range(3):
        steps.append(dec(prev[:, : i + 1], c, incremental_state=state)[0])
    order = torch.tensor([2, 2, 0])  # beam search keeps hypotheses 2, 2, 0
    dec.reorder_incremental_state_scripting(state, order)
    prev, c = prev[order], c[order]
    steps = [s[order] for s in steps]
    for i in range(3, 6):
        steps.append(dec(prev[:, : i + 1], c, incremental_state=state)[0])
    full, _ = dec(prev, c)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_ar_decoder_rejects_more_steps_than_embeddings():
    dec = _decoder()
    _, prev = tf_inputs(dec.dictionary, [5])
    with pytest.raises(ValueError, match="5 previous tokens but only 4 CIF embeddings"):
        dec(prev, torch.randn(1, 4, 12))


def test_nar_decoder_shapes_and_padding_invariance():
    dec = _decoder(autoregressive=False)
    c = torch.randn(2, 6, 12)
    mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    c[1, 4:] = 0
    logits, extra = dec(None, c, mask)
    assert logits.shape == (2, 6, len(dec.dictionary)) and extra["states"].shape == (2, 6, 16)
    alone, _ = dec(None, c[1:, :4], mask[1:, :4])
    torch.testing.assert_close(logits[1, :4], alone[0], atol=1e-5, rtol=1e-5)


# 4. the model contract (docs/DESIGN.md) -------------------------------------------------------------
@pytest.mark.parametrize("decoder_type", ["autoregressive", "non_autoregressive"])
def test_model_outputs_follow_the_design_contract(decoder_type):
    model = small_model(decoder_type=decoder_type)
    V = len(model.decoder.dictionary)
    x, L = padded_batch([64, 50, 30])
    S = [9, 6, 4]
    target, prev = tf_inputs(model.decoder.dictionary, S)
    out = model(x, L, prev, target_lengths=torch.tensor(S))
    B, Tp = 3, 16
    assert out["encoder_out"].shape == (B, Tp, 16) and out["encoder_padding_mask"].shape == (B, Tp)
    assert out["encoder_lengths"].tolist() == [16, 13, 8]
    assert out["ctc_logits"].shape == (B, Tp, V) and out["alpha"].shape == (B, Tp)
    assert out["cif"].lengths.tolist() == S and out["cif"].embeddings.shape == (B, 9, 16)
    assert out["decoder_logits"].shape == (B, 9, V) and out["decoder_states"].shape == (B, 9, 16)
    # Each output alone must give every parameter upstream of it a non-zero gradient (and the others
    # none): a path cut by a detach or a zero backward (e.g. no gradient through the CIF integration into
    # the encoder) leaves gradients that exist but are zero, or arrive only through another output.
    upstream = {
        "decoder_logits": lambda n: not n.startswith("ctc_proj."),  # via CIF: encoder, weight predictor, decoder
        "ctc_logits": lambda n: n.startswith(("encoder.", "ctc_proj.")),
        "alpha": lambda n: n.startswith(("encoder.", "cif.")),
    }
    g = torch.Generator().manual_seed(0)
    for key, needs in upstream.items():
        model.zero_grad(set_to_none=True)
        out = model(x, L, prev, target_lengths=torch.tensor(S))
        (out[key] * torch.randn(out[key].shape, generator=g)).sum().backward()
        for n, p in model.named_parameters():
            if needs(n):
                assert p.grad is not None and p.grad.abs().max() > 0, f"{key} gives {n} no gradient"
            else:
                assert p.grad is None or not p.grad.any(), f"{key} reaches {n}"
    model.eval()
    encoder = model.forward_encoder(x, L)
    alpha, cif_out = model.forward_cif(encoder)  # inference: the raw weights decide N
    assert cif_out.embeddings.shape[1] == int(cif_out.lengths.max())


def test_architectures_sizes():
    """The paper's model has the authors' 47.2 M parameters with AISHELL-1's 4,234 symbols;
    command-line options override an architecture's values."""
    torch.manual_seed(0)
    paper = CifModel.build_model(arch_config("cif_conformer_paper"), _Task(make_dict(4230)))
    assert abs(paper.num_parameters() / 1e6 - 47.2) < 0.1
    assert paper.encoder.downsample == 8 and len(paper.encoder.layers) == 15
    tiny = arch_config("cif_tiny", encoder_layers=3)
    assert tiny.encoder_layers == 3 and tiny.encoder_embed_dim == 144 and tiny.cif_threshold == 1.0
    libri = arch_config("cif_conformer_librispeech")
    assert libri.encoder_embed_dim == 512 and libri.encoder_pool_after == "8"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_passes_the_option_check(arch):
    check_options(arch_config(arch))


@pytest.mark.parametrize("overrides, named", [
    (dict(encoder_attention_heads=5), "--encoder-embed-dim 144 must be a multiple of --encoder-attention-heads 5"),
    (dict(decoder_attention_heads=0), "--decoder-attention-heads 0 (>= 1)"),
    (dict(depthwise_conv_kernel_size=14), "--depthwise-conv-kernel-size must be odd and positive, got 14"),
    (dict(cif_conv_kernel=0), "--cif-conv-kernel must be odd and positive, got 0"),
    (dict(subsample_layers=0), "--subsample-layers must be >= 1, got 0"),
    (dict(encoder_pool_after="2,5"), "--encoder-pool-after '2,5': layers [5] are outside 1..4"),
    (dict(encoder_pool_after="two"), "--encoder-pool-after must be comma-separated layer numbers, got 'two'"),
    (dict(cif_dropout=1.5), "--cif-dropout must be in [0, 1], got 1.5"),
    (dict(cif_threshold=0.0), "--cif-threshold must be > 0, got 0.0"),
    (dict(encoder_chunk_size=4, dynamic_chunk_training=True), "--encoder-chunk-size or --dynamic-chunk-training"),
    (dict(share_decoder_input_output_embed=True, decoder_type="non_autoregressive"), "needs --decoder-type"),
])
def test_bad_model_options_are_one_user_error_naming_the_option(overrides, named):
    """What the modules cannot build (or fairseq's attention would only assert on) stops build_model with a
    UserError (one line under fairseq-train, errors.py) that names the option; two bad options: both named."""
    with pytest.raises(UserError) as err:
        CifModel.build_model(arch_config("cif_tiny", **overrides), _Task(make_dict()))
    assert named in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(UserError, match="--cif-threshold.*; --subsample-layers|--subsample-layers.*; .*--cif-threshold"):
        check_options(arch_config("cif_tiny", cif_threshold=-1.0, subsample_layers=0))


def test_encoder_input_scale_sqrt_d_multiplies_the_first_layer_input_by_sqrt_d():
    """--encoder-input-scale sqrt_d (fairseq's S2T conformer) against none: the same parameters, and
    the first conformer layer's input is exactly sqrt(D) times as large (D = 20: an irrational
    factor), on every frame."""
    import math

    from fairseq import options

    d = 20
    plain = small_model(encoder_embed_dim=d).eval()
    scaled = small_model(encoder_embed_dim=d, encoder_input_scale="sqrt_d").eval()
    assert plain.cfg.encoder_input_scale == "none" and scaled.cfg.encoder_input_scale == "sqrt_d"
    a, b = plain.state_dict(), scaled.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # no parameter added
    x, lengths = padded_batch([37, 20])
    layer1_inputs = []
    for model in (plain, scaled):
        hook = model.encoder.layers[0].register_forward_pre_hook(
            lambda module, args: layer1_inputs.append(args[0].detach().clone()))
        with torch.no_grad():
            model.forward_encoder(x, lengths)
        hook.remove()
    x_plain, x_scaled = layer1_inputs
    assert x_plain.shape == (10, 2, d) and x_plain.abs().max() > 0
    assert torch.equal(x_scaled, x_plain * math.sqrt(d))
    # the option on fairseq's command line, default none
    for argv, expected in (([], "none"), (["--encoder-input-scale", "sqrt_d"], "sqrt_d")):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            "DATA", "--task", "cif_asr", "--arch", "cif_conformer_paper", "--criterion", "cif", *argv])
        assert args.encoder_input_scale == expected
