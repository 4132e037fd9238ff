"""Conformer encoder: conv2d subsampling (2x per layer), conformer layers with relative-position attention,
optional max-pooling (2x) after chosen layers, and exact output lengths.

Shapes: B batch, T input frames, T' output frames, F feature dim, D model dim.

Built from fairseq's ``ConformerEncoderLayer`` (macaron FFN, ESPnet relative-position attention, depthwise
convolution, pre-LN) and ``RelPositionalEncoding``, plus our :class:`Conv2dSubsampler`.
Departures (the first two about padding and lengths):

* fairseq's ``Conv2dSubsampler`` has a fixed two layers, derives output lengths from a rounded
  global ratio (wrong for short batches) and lets a first conv's output at padded frames
  (ReLU(bias) != 0) reach the second. Ours takes 1..n layers, zeroes padded frames after each conv
  and returns exact lengths (``ceil(T / 2)`` per k=3, stride-2, padding-1 layer), so CTC sees the
  true lengths.
* fairseq's conformer convolution module runs its depthwise conv over padded frames, so a short
  utterance's output depends on what it is batched with. :class:`MaskedConformerLayer` zeroes padded
  frames before the depthwise conv (as ESPnet and WeNet do); with that, encoding an utterance alone
  or inside a padded batch gives the same output (in eval mode; BatchNorm statistics still see the
  zeros in training).
* fairseq's S2T conformer multiplies the subsampled input by sqrt(D) before the layers; ours does
  so only with ``input_scale`` = sqrt(D) (``--encoder-input-scale sqrt_d``; default 1.0).

Streaming (all off by default; a full-context model computes exactly what it did before): with
``causal_conv`` the depthwise convolution sees only the current and earlier frames (left padding
k - 1); with ``chunk_size`` > 0 (fixed) or ``dynamic_chunk`` (U2's random chunk per batch, see
``chunk_attention.py``) self-attention is restricted to the frame's chunk and ``left_chunks`` chunks
before it. Chunks are counted in output frames; before a max-pooling a chunk is 2x as many frames,
so pooled pairs never straddle chunks. ``encoder_stream.py`` runs such an encoder chunk by chunk.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import RelPositionalEncoding
from fairseq.modules.conformer_layer import ConformerEncoderLayer, ConvolutionModule

from fairseq_hkd.models.chunk_attention import (chunk_attention_mask, float32_softmax_attention, project_kv,
                                                rel_pos_attention, sample_chunk)

__all__ = ["ConformerEncoder", "Conv2dSubsampler", "subsampled_lengths", "pooled_lengths", "lengths_to_padding_mask"]


def subsampled_lengths(lengths: torch.Tensor, n_convs: int = 2) -> torch.Tensor:
    """Exact output length of ``n_convs`` conv layers with kernel 3, stride 2, padding 1.

    Each layer maps L -> floor((L + 2 - 3) / 2) + 1 = ceil(L / 2) (and 0 -> 0).
    """
    for _ in range(n_convs):
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
    return lengths


def pooled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Length after ``MaxPool1d(2, 2, ceil_mode=True)``: ceil(L / 2)."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True at padding."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class Conv2dSubsampler(nn.Module):
    """n x (Conv2d k=3, stride 2, padding 1 over (time, freq) + ReLU), then Linear -> D.

    fairseq's ``Conv2dSubsampler`` is fixed at two layers; the paper's model has one (2x, then two
    max-poolings: 8x, 80 ms frames, the authors' ``--conv-kernel-sizes 3``). Padded frames are
    zeroed after every conv so that batching does not change valid outputs, and lengths are exact.
    """

    def __init__(self, input_dim: int, channels: int, out_dim: int, layers: int):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the conv2d subsampler needs at least one layer, got {layers}")
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2, padding=1) for i in range(layers))
        freq = input_dim
        for _ in range(layers):
            freq = (freq + 1) // 2
        self.out = nn.Linear(channels * freq, out_dim)

    def forward(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor):
        """src_tokens: [B, T, F], src_lengths: [B] -> (x [T', B, D], lengths [B]).

        The last conv's padded frames are not zeroed on its [B, C, T', F'] maps but after the
        per-frame projection, where they are C * F' / D times fewer: a zeroed frame would project to
        the bias, so padded output frames are set to the bias (the same values and gradients; in
        the paper model's int8 ONNX encoder the masking of the maps was 6 % of the time)."""
        x, lengths = src_tokens.unsqueeze(1), src_lengths  # [B, 1, T, F]
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            lengths = subsampled_lengths(lengths, n_convs=1)
            if i < len(self.convs) - 1:
                x = x.masked_fill(lengths_to_padding_mask(lengths, x.size(2))[:, None, :, None], 0.0)
        b, c, t, f = x.shape
        y = self.out(x.permute(2, 0, 1, 3).reshape(t, b, c * f))  # [T', B, D]
        pad = lengths_to_padding_mask(lengths, t).t().unsqueeze(-1)  # [T', B, 1]
        if self.out.bias is None:
            return y.masked_fill(pad, 0.0), lengths
        return torch.where(pad, self.out.bias.to(y.dtype), y), lengths


class _MaskedConvolutionModule(ConvolutionModule):
    """fairseq's conformer convolution module with padded frames zeroed before the depthwise conv;
    ``causal``: the depthwise conv is padded k - 1 frames on the left only (same parameters)."""

    causal: bool = False

    def _glu(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: [B, T, D] -> [B, D, T], the depthwise conv's input."""
        x = self.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)))  # [B, D, T]
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(1), 0.0)
        return x

    def _depthwise_valid(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise conv without padding: [B, D, T + k - 1] -> [B, D, T]."""
        conv = self.depthwise_conv
        return F.conv1d(x, conv.weight, conv.bias, groups=conv.groups)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.batch_norm(x))
        return self.dropout(self.pointwise_conv2(x)).transpose(1, 2)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B, T, D], padding_mask: [B, T] (True = pad) -> [B, T, D]."""
        x = self._glu(x, padding_mask)
        if self.causal:
            x = self._depthwise_valid(F.pad(x, (self.depthwise_conv.kernel_size[0] - 1, 0)))
        else:
            x = self.depthwise_conv(x)
        return self._out(x)

    def forward_chunk(self, x: torch.Tensor, cache: Optional[torch.Tensor]):
        """One chunk of a stream: x [B, t, D], cache [B, D, c] (the depthwise conv's input of earlier
        frames; None at the start) -> ([B, t, D], new cache). Causal: exact. Not causal: the chunk's
        last k // 2 frames see zeros instead of the next chunk (chunk-limited, as WeNet's)."""
        y = self._glu(x, None)
        k, t = self.depthwise_conv.kernel_size[0], y.size(2)
        if self.causal:
            z = torch.cat([y.new_zeros(y.size(0), y.size(1), k - 1) if cache is None else cache, y], dim=2)
            out = self._depthwise_valid(z)
            keep = k - 1
        else:
            z = y if cache is None else torch.cat([cache, y], dim=2)
            out = self.depthwise_conv(z)[:, :, z.size(2) - t:]
            keep = k // 2
        return self._out(out), z[:, :, z.size(2) - min(keep, z.size(2)):]


class MaskedConformerLayer(ConformerEncoderLayer):
    """fairseq's ``ConformerEncoderLayer`` (rel-pos attention) whose convolution ignores padding.

    The sub-modules (and so parameter names and initialisation) are fairseq's; only the
    convolution module is swapped for one that takes the padding mask.
    """

    def __init__(self, embed_dim: int, ffn_embed_dim: int, attention_heads: int, dropout: float,
                 depthwise_conv_kernel_size: int, causal_conv: bool = False):
        super().__init__(embed_dim, ffn_embed_dim, attention_heads, dropout, use_fp16=False,
                         depthwise_conv_kernel_size=depthwise_conv_kernel_size,
                         activation_fn="swish", attn_type="espnet", pos_enc_type="rel_pos")
        self.conv_module = _MaskedConvolutionModule(
            embed_dim=embed_dim, channels=embed_dim,
            depthwise_kernel_size=depthwise_conv_kernel_size, dropout=dropout,
            activation_fn="swish")
        self.conv_module.causal = causal_conv
        float32_softmax_attention(self.self_attn)  # bf16 autocast: attention softmax in float32

    def forward(self, x: torch.Tensor, encoder_padding_mask: Optional[torch.Tensor],
                position_emb: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None):
        """x: [T, B, D], encoder_padding_mask: [B, T], position_emb: [2T-1, 1, D], attn_mask: [B, T, T]
        (True = may not attend; chunk masks; None: fairseq's attention with the padding mask)
        -> ([T, B, D], None)."""
        x = x + 0.5 * self.ffn1(x)
        residual = x
        y = self.self_attn_layer_norm(x)
        if attn_mask is None:
            y, _ = self.self_attn(query=y, key=y, value=y, key_padding_mask=encoder_padding_mask,
                                  pos_emb=position_emb, need_weights=False)
        else:
            k, v = project_kv(self.self_attn, y)
            y = rel_pos_attention(self.self_attn, y, k, v, position_emb, attn_mask)
        x = residual + self.self_attn_dropout(y)
        x = x + self.conv_module(x.transpose(0, 1), encoder_padding_mask).transpose(0, 1)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x), None

    def forward_chunk(self, x: torch.Tensor, position_emb: torch.Tensor, cache: Dict[str, torch.Tensor],
                      max_left: int = -1):
        """One chunk of a stream (eval mode). x: [t, B, D]; position_emb: [t + T2 - 1, 1, D] for T2 = L + t keys,
        L of them cached (``rel_pos_slice``); cache: {"k", "v": [B, H, L, d_k], "conv": [B, D, c]}
        (empty at the start); max_left: frames of keys/values to keep for the next chunk (< 0: all).
        -> ([t, B, D], new cache)."""
        x = x + 0.5 * self.ffn1(x)
        residual = x
        y = self.self_attn_layer_norm(x)
        k, v = project_kv(self.self_attn, y)
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        if "k" not in cache:  # no left context: fairseq's op, as in the full-context forward
            y, _ = self.self_attn(query=y, key=y, value=y, key_padding_mask=None, pos_emb=position_emb,
                                  need_weights=False)
        else:
            y = rel_pos_attention(self.self_attn, y, k, v, position_emb, None)
        x = residual + self.self_attn_dropout(y)
        conv, conv_cache = self.conv_module.forward_chunk(x.transpose(0, 1), cache.get("conv"))
        x = x + conv.transpose(0, 1)
        x = x + 0.5 * self.ffn2(x)
        if max_left >= 0:
            k, v = k[:, :, k.size(2) - min(max_left, k.size(2)):], v[:, :, v.size(2) - min(max_left, v.size(2)):]
        return self.final_layer_norm(x), {"k": k, "v": v, "conv": conv_cache}


class ConformerEncoder(nn.Module):
    """Fbank [B, T, F] -> encoder states [B, T', D] at a 2^(conv_layers + pools) lower frame rate.

    Args:
        input_dim: F, feature dimension.
        conv_channels: channels of the subsampling conv2d layers.
        conv_layers: number of stride-2 conv2d layers (1 in the paper).
        embed_dim: D.
        ffn_embed_dim: conformer feed-forward inner size.
        attention_heads: heads of the relative-position self-attention.
        layers: number of conformer layers.
        depthwise_kernel: depthwise conv kernel size (odd).
        pool_after: 1-based layer indices followed by MaxPool1d(2) over time (e.g. [5, 10]).
        dropout: dropout in the layers and after the subsampler.
        max_positions: initial size of the relative position table (grows on demand).
        input_scale: factor on the subsampler's output before the first layer: 1.0, or sqrt(D) as in
            fairseq's S2T conformer (``--encoder-input-scale sqrt_d``).
        causal_conv: depthwise convolutions see no future frames (needed for exact streaming).
        chunk_size: > 0: attention restricted to chunks of this many output frames (training and
            inference); 0: full context.
        dynamic_chunk: training draws a chunk per batch (U2: full context or 1..``max_chunk``);
            inference uses full context unless :meth:`set_chunk` says otherwise.
        left_chunks: chunks of left context a frame attends to (< 0: all).
        max_chunk: the largest chunk that dynamic chunk training draws.
    """

    def __init__(self, input_dim: int, conv_channels: int, conv_layers: int, embed_dim: int, ffn_embed_dim: int,
                 attention_heads: int, layers: int, depthwise_kernel: int, pool_after: List[int],
                 dropout: float, max_positions: int = 3000, input_scale: float = 1.0, causal_conv: bool = False,
                 chunk_size: int = 0, dynamic_chunk: bool = False, left_chunks: int = -1, max_chunk: int = 32):
        super().__init__()
        if chunk_size < 0 or max_chunk < 1:
            raise ValueError(f"chunk_size must be >= 0 and max_chunk >= 1, got {chunk_size} and {max_chunk}")
        if chunk_size > 0 and dynamic_chunk:
            raise ValueError("give a fixed chunk size or dynamic chunk training, not both")
        self.causal_conv = bool(causal_conv)
        self.chunk_size = int(chunk_size)
        self.dynamic_chunk = bool(dynamic_chunk)
        self.left_chunks = int(left_chunks)
        self.max_chunk = int(max_chunk)
        self.decode_chunk: Optional[int] = None  # inference chunk override (set_chunk)
        if not input_scale > 0:
            raise ValueError(f"the encoder's input scale must be positive, got {input_scale}")
        self.input_scale = float(input_scale)
        bad = [i for i in pool_after if not 1 <= i <= layers]
        if bad:
            raise ValueError(f"pool_after={pool_after}: indices {bad} are outside 1..{layers}")
        if depthwise_kernel % 2 != 1:
            raise ValueError(f"depthwise kernel size must be odd, got {depthwise_kernel}")
        self.subsample = Conv2dSubsampler(input_dim, conv_channels, embed_dim, conv_layers)
        self.dropout = nn.Dropout(dropout)
        self.embed_positions = RelPositionalEncoding(max_positions, embed_dim)
        self.layers = nn.ModuleList(
            MaskedConformerLayer(embed_dim, ffn_embed_dim, attention_heads, dropout, depthwise_kernel, causal_conv)
            for _ in range(layers))
        self.pool_after = sorted(set(pool_after))
        self.pool = nn.MaxPool1d(kernel_size=2, stride=2, ceil_mode=True)
        self.embed_dim = embed_dim
        self.conv_layers = conv_layers
        self.downsample = 2 ** (conv_layers + len(self.pool_after))

    def set_chunk(self, chunk: Optional[int], left_chunks: Optional[int] = None) -> None:
        """Inference chunk (output frames; 0 = full context; None = the trained setting: the fixed chunk,
        or full context after dynamic training) and optionally the left context in chunks."""
        if chunk is not None and chunk < 0:
            raise ValueError(f"chunk must be >= 0 output frames, got {chunk}")
        self.decode_chunk = chunk
        if left_chunks is not None:
            self.left_chunks = int(left_chunks)

    def current_chunk(self, max_len: int) -> int:
        """The chunk (output frames, 0 = full context) for a batch of ``max_len`` output frames:
        a fresh U2 draw in dynamic training, else the fixed or inference setting."""
        if self.training:
            return sample_chunk(max_len, self.max_chunk) if self.dynamic_chunk else self.chunk_size
        return self.chunk_size if self.decode_chunk is None else self.decode_chunk

    def _attn_mask(self, padding_mask: torch.Tensor, chunk: int) -> Optional[torch.Tensor]:
        """[B, T] padding -> [B, T, T] True where attention is not allowed (chunk at this rate)."""
        if chunk <= 0:
            return None
        allowed = chunk_attention_mask(padding_mask.size(1), chunk, self.left_chunks, padding_mask.device)
        return ~allowed[None] | padding_mask[:, None, :]

    def output_lengths(self, src_lengths: torch.Tensor) -> torch.Tensor:
        """[B] input frames -> [B] exact output frames."""
        lengths = subsampled_lengths(src_lengths, self.conv_layers)
        for _ in self.pool_after:
            lengths = pooled_lengths(lengths)
        return lengths

    def _pool(self, x: torch.Tensor, padding_mask: torch.Tensor, lengths: torch.Tensor):
        """Max-pool [T, B, D] by 2 over time; padded frames never win the max."""
        x = x.masked_fill(padding_mask.t().unsqueeze(-1), float("-inf"))
        # MaxPool1d(2, ceil_mode=True) as pad-to-even + pairwise max: the same values, and a
        # time axis torch.export keeps symbolic (ceil_mode pooling specialised it to the example)
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, x.size(0) % 2), value=float("-inf"))
        x = x.unflatten(0, (-1, 2)).amax(1)  # [ceil(T/2), B, D]
        lengths = pooled_lengths(lengths)
        padding_mask = lengths_to_padding_mask(lengths, x.size(0))
        return x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0), padding_mask, lengths

    def forward(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> Dict[str, torch.Tensor]:
        """src_tokens: [B, T, F] zero-padded fbank, src_lengths: [B] ->
        dict(encoder_out [B, T', D] (0 at padding), encoder_padding_mask [B, T'] (True = pad),
        encoder_lengths [B])."""
        if src_tokens.dim() != 3:
            raise ValueError(f"expected fbank features [B, T, F], got shape {tuple(src_tokens.shape)}")
        x, lengths = self.subsample(src_tokens, src_lengths)  # [T', B, D]
        padding_mask = lengths_to_padding_mask(lengths, x.size(0))
        if self.input_scale != 1.0:
            x = x * self.input_scale
        x = self.dropout(x)
        pos_emb = self.embed_positions(x)
        pools = len(self.pool_after)
        out_len = x.size(0)  # padded output length, without a device sync
        for _ in range(pools):
            out_len = (out_len + 1) // 2
        chunk = self.current_chunk(out_len)
        attn_mask = self._attn_mask(padding_mask, chunk * 2 ** pools)
        for i, layer in enumerate(self.layers, start=1):
            x, _ = layer(x, padding_mask, pos_emb, attn_mask)
            if i in self.pool_after:
                x, padding_mask, lengths = self._pool(x, padding_mask, lengths)
                pos_emb = self.embed_positions(x)
                pools -= 1
                attn_mask = self._attn_mask(padding_mask, chunk * 2 ** pools)
        x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        return {
            "encoder_out": x.transpose(0, 1),
            "encoder_padding_mask": padding_mask,
            "encoder_lengths": lengths,
        }
