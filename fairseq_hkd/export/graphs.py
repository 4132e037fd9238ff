"""The exportable graphs of a CIF model: encoder (+ CIF weights), one autoregressive decoder step
with its cache, and the non-autoregressive decoder.

Shapes: B batch, T fbank frames, F fbank dim, T' encoder frames, D encoder size (= C, the CIF
size), R decoder rows (utterances x beam), L decoder layers, H heads, S cached steps, d head size,
N CIF tokens, V vocabulary.

Every wrapper runs the model's own modules (fairseq's conformer and decoder layers, our
subsampler, pooling and weight predictor), so the graphs compute what PyTorch computes. Two
position tables are replaced by the same formula evaluated in the graph (bit-identical rows in
PyTorch; ONNX Runtime's sin/cos differ in the last bit): fairseq's ``RelPositionalEncoding``
stores a table of 2 * max_source_positions - 1 rows and the decoder's sinusoidal table has 1,024;
computed in the graph, neither limits the input length nor weighs in the model file.

Kernel-1 convolutions (the conformer convolution module's pointwise convs) are written as matrix
products (``_PointwiseAsLinear``, the same arithmetic) so that ``--quantize int8``, which quantizes
MatMul/Gemm weights, covers them too: as fp32 Conv nodes they were 8 % of the paper model's int8
encoder time (BENCHMARKS.md).

The CIF integration is not in a graph: the runtime computes it in numpy float64
(``fairseq_hkd/runtime/cif.py``), the same fire placement as ``fairseq_hkd.ops.cif``.
"""
import copy
import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EncoderGraph", "DecoderStepGraph", "NarDecoderGraph", "sinusoid_frequencies"]


def sinusoid_frequencies(dim: int) -> torch.Tensor:
    """[dim // 2] float32: fairseq's ``SinusoidalPositionalEmbedding.get_embedding`` factors
    exp(-i * log(10000) / (dim/2 - 1)), computed with the same ops (so rows match bit for bit)."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.float) * -scale)


class _GraphRelPositions(nn.Module):
    """fairseq's ``RelPositionalEncoding.forward`` without its table: x [T, B, D] -> pos_emb
    [2T-1, 1, D], row j for the relative position T-1-j (sin at even, cos at odd channels)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
        self.register_buffer("div", div, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.size(0)
        # fairseq: positive part sin(p * div) for p = T-1 .. 0, negative part sin(-1 * p * div)
        # for p = 1 .. T-1; both are sin(r * div) for r = T-1 .. -(T-1) (negation is exact)
        pos = torch.arange(t, dtype=torch.float32, device=x.device)
        angle_pos = pos.flip(0)[:, None] * self.div[None, :]
        angle_neg = (-1 * pos[1:])[:, None] * self.div[None, :]
        angle = torch.cat([angle_pos, angle_neg], dim=0)  # [2T-1, D/2]
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(2 * t - 1, self.dim)
        return pe.to(x.dtype).unsqueeze(1)


class _GraphSinusoidalPositions(nn.Module):
    """fairseq's ``SinusoidalPositionalEmbedding`` for the NAR decoder (no incremental state):
    tokens [B, N] -> [B, N, D], position p = padding_idx + index among non-pad tokens, 0 at pad."""

    def __init__(self, dim: int, padding_idx: int):
        super().__init__()
        self.dim, self.padding_idx = dim, padding_idx
        self.register_buffer("freq", sinusoid_frequencies(dim), persistent=False)

    def forward(self, tokens: torch.Tensor, incremental_state=None, **unused) -> torch.Tensor:
        assert incremental_state is None, "the NAR graph has no incremental state"
        mask = tokens.ne(self.padding_idx).int()
        positions = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + self.padding_idx
        emb = sinusoid_rows(positions.float(), self.freq, self.dim)
        return emb.masked_fill((positions == self.padding_idx).unsqueeze(-1), 0.0)


def sinusoid_rows(positions: torch.Tensor, freq: torch.Tensor, dim: int) -> torch.Tensor:
    """positions [...] float -> [..., dim]: cat(sin(p * f), cos(p * f)) (+ a zero column for odd dim)."""
    angle = positions.unsqueeze(-1) * freq
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class _PointwiseAsLinear(nn.Module):
    """A kernel-1, ungrouped, unpadded ``nn.Conv1d`` as a matrix product: [B, C_in, T] -> [B, C_out, T]."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach()[:, :, 0].clone())  # [C_out, C_in]
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.transpose(1, 2), self.weight, self.bias).transpose(1, 2)


def _is_pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv1d) and m.kernel_size == (1,) and m.groups == 1 and m.stride == (1,)
            and m.dilation == (1,) and m.padding in ((0,), "valid") and m.padding_mode == "zeros")


def pointwise_convs_as_linear(module: nn.Module) -> int:
    """Replace every pointwise ``nn.Conv1d`` under ``module`` (in place) by ``_PointwiseAsLinear``;
    returns how many were replaced."""
    n = 0
    for name, child in list(module.named_children()):
        if _is_pointwise(child):
            setattr(module, name, _PointwiseAsLinear(child))
            n += 1
        else:
            n += pointwise_convs_as_linear(child)
    return n


class EncoderGraph(nn.Module):
    """fbank [B, T, F] float32 (after CMVN), fbank_lengths [B] int64 ->
    (encoder_out [B, T', D], encoder_lengths [B] int64, alpha [B, T'] float32, 0 at padding).

    ``alpha`` is the CIF weight predictor's output (``CifMiddleware.predict_alpha``): the weights
    the op integrates at inference, before any scaling.
    """

    def __init__(self, model):
        super().__init__()
        model = copy.deepcopy(model).eval()
        model.encoder.embed_positions = _GraphRelPositions(model.encoder.embed_dim)
        pointwise_convs_as_linear(model.encoder)
        self.encoder, self.cif = model.encoder, model.cif

    def forward(self, fbank: torch.Tensor, fbank_lengths: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        enc = self.encoder(fbank, fbank_lengths)
        h = enc["encoder_out"].float()
        alpha = self.cif.predict_alpha(h, enc["encoder_padding_mask"])
        return h, enc["encoder_lengths"], alpha


class CtcGraph(nn.Module):
    """encoder_out [B, T', D] float32 -> ctc_lprobs [B, T', V] float32 (log-softmax of the CTC head),
    for the runtime's count search (``runtime/count.py``)."""

    def __init__(self, model):
        super().__init__()
        self.proj = copy.deepcopy(model.ctc_proj).eval()

    def forward(self, encoder_out: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.proj(encoder_out).float(), dim=-1)


class DecoderStepGraph(nn.Module):
    """One autoregressive step for R rows (``CifDecoder`` in incremental mode).

    Inputs: prev_tokens [R] int64 (y_{i-1}; </s> at step 0), c_prev [R, C] (c_{i-1}; zeros at
    step 0), c_cur [R, C] (c_i), step [] int64 (i, the same for every row), cache_key and
    cache_value [L, R, H, S, d] (S = i: the keys/values of steps 0 .. i-1; S = 0 at step 0).
    Outputs: lprobs [R, V] float32 (log-softmax of the logits, as the generator computes it),
    new_cache_key, new_cache_value [L, R, H, S + 1, d].

    The layers are fairseq's, fed the cache through their ``incremental_state`` buffers, so the
    attention arithmetic is the generator's.
    """

    def __init__(self, model):
        super().__init__()
        decoder = copy.deepcopy(model.decoder).eval()
        if not decoder.autoregressive:
            raise ValueError("DecoderStepGraph needs the autoregressive decoder")
        self.decoder = decoder
        self.register_buffer("freq", sinusoid_frequencies(decoder.embed_dim), persistent=False)

    def forward(self, prev_tokens, c_prev, c_cur, step, cache_key, cache_value):
        dec = self.decoder
        # 1. inputs: W_in [sqrt(D) E(y_{i-1}); c_{i-1}] + P_i, P_i the table row padding_idx + i + 1
        position = (step + (dec.padding_idx + 1)).float().reshape(1)
        pos = sinusoid_rows(position, self.freq, dec.embed_dim)  # [1, D]
        emb = dec.embed_scale * dec.embed_tokens(prev_tokens)
        x = dec.input_proj(torch.cat([emb, c_prev.to(emb.dtype)], dim=-1)) + pos
        x = x.unsqueeze(0)  # [1, R, D]
        # 2. layers with the cache in fairseq's incremental-state buffers
        state = {}
        # eager PyTorch cannot view an empty cache the way fairseq does (an export always traces this)
        if torch.compiler.is_exporting() or cache_key.size(3) > 0:
            for i, layer in enumerate(dec.layers):
                layer.self_attn._set_input_buffer(state, {"prev_key": cache_key[i].contiguous(),
                                                          "prev_value": cache_value[i].contiguous(),
                                                          "prev_key_padding_mask": None})
        for layer in dec.layers:
            x, _, _ = layer(x, incremental_state=state, self_attn_mask=None, self_attn_padding_mask=None)
        new_key = torch.stack([layer.self_attn._get_input_buffer(state)["prev_key"] for layer in dec.layers])
        new_value = torch.stack([layer.self_attn._get_input_buffer(state)["prev_value"] for layer in dec.layers])
        # 3. output head: s_i = W_out [LN(d_i); c_i], logits = W_proj s_i
        x = dec.layer_norm(x)[0]
        states = dec.output_proj(torch.cat([x, c_cur.to(x.dtype)], dim=-1))
        lprobs = F.log_softmax(dec.output_projection(states).float(), dim=-1)
        return lprobs, new_key, new_value


class NarDecoderGraph(nn.Module):
    """cif_embeddings [B, N, C] (zero beyond each length), cif_lengths [B] int64 ->
    lprobs [B, N, V] float32 (log-softmax of the NAR decoder's logits)."""

    def __init__(self, model):
        super().__init__()
        decoder = copy.deepcopy(model.decoder).eval()
        if decoder.autoregressive:
            raise ValueError("NarDecoderGraph needs the non-autoregressive decoder")
        decoder.embed_positions = _GraphSinusoidalPositions(decoder.embed_dim, decoder.padding_idx)
        self.decoder = decoder

    def forward(self, cif_embeddings, cif_lengths):
        n = cif_embeddings.size(1)
        pad_mask = torch.arange(n, device=cif_embeddings.device)[None, :] >= cif_lengths[:, None]
        logits, _ = self.decoder(None, cif_embeddings, pad_mask)
        return F.log_softmax(logits.float(), dim=-1)


def cache_shape(model, rows: int, steps: int) -> Tuple[int, int, int, int, int]:
    """[L, R, H, S, d] of the decoder step graph's cache."""
    layer = model.decoder.layers[0].self_attn
    return (len(model.decoder.layers), rows, layer.num_heads, steps, layer.head_dim)
