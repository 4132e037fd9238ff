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
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq.modules import RelPositionalEncoding
from fairseq.modules.conformer_layer import ConformerEncoderLayer, ConvolutionModule

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
        """src_tokens: [B, T, F], src_lengths: [B] -> (x [T', B, D], lengths [B])."""
        x, lengths = src_tokens.unsqueeze(1), src_lengths  # [B, 1, T, F]
        for conv in self.convs:
            x = torch.relu(conv(x))
            lengths = subsampled_lengths(lengths, n_convs=1)
            x = x.masked_fill(lengths_to_padding_mask(lengths, x.size(2))[:, None, :, None], 0.0)
        b, c, t, f = x.shape
        return self.out(x.permute(2, 0, 1, 3).reshape(t, b, c * f)), lengths


class _MaskedConvolutionModule(ConvolutionModule):
    """fairseq's conformer convolution module with padded frames zeroed before the depthwise conv."""

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B, T, D], padding_mask: [B, T] (True = pad) -> [B, T, D]."""
        x = self.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)))  # [B, D, T]
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(1), 0.0)
        x = self.activation(self.batch_norm(self.depthwise_conv(x)))
        x = self.dropout(self.pointwise_conv2(x))
        return x.transpose(1, 2)


class MaskedConformerLayer(ConformerEncoderLayer):
    """fairseq's ``ConformerEncoderLayer`` (rel-pos attention) whose convolution ignores padding.

    The sub-modules (and so parameter names and initialisation) are fairseq's; only the
    convolution module is swapped for one that takes the padding mask.
    """

    def __init__(self, embed_dim: int, ffn_embed_dim: int, attention_heads: int, dropout: float,
                 depthwise_conv_kernel_size: int):
        super().__init__(embed_dim, ffn_embed_dim, attention_heads, dropout, use_fp16=False,
                         depthwise_conv_kernel_size=depthwise_conv_kernel_size,
                         activation_fn="swish", attn_type="espnet", pos_enc_type="rel_pos")
        self.conv_module = _MaskedConvolutionModule(
            embed_dim=embed_dim, channels=embed_dim,
            depthwise_kernel_size=depthwise_conv_kernel_size, dropout=dropout,
            activation_fn="swish")

    def forward(self, x: torch.Tensor, encoder_padding_mask: Optional[torch.Tensor],
                position_emb: Optional[torch.Tensor] = None):
        """x: [T, B, D], encoder_padding_mask: [B, T], position_emb: [2T-1, 1, D] -> ([T, B, D], None)."""
        x = x + 0.5 * self.ffn1(x)
        residual = x
        y = self.self_attn_layer_norm(x)
        y, _ = self.self_attn(query=y, key=y, value=y, key_padding_mask=encoder_padding_mask,
                              pos_emb=position_emb, need_weights=False)
        x = residual + self.self_attn_dropout(y)
        x = x + self.conv_module(x.transpose(0, 1), encoder_padding_mask).transpose(0, 1)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x), None


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
    """

    def __init__(self, input_dim: int, conv_channels: int, conv_layers: int, embed_dim: int, ffn_embed_dim: int,
                 attention_heads: int, layers: int, depthwise_kernel: int, pool_after: List[int],
                 dropout: float, max_positions: int = 3000, input_scale: float = 1.0):
        super().__init__()
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
            MaskedConformerLayer(embed_dim, ffn_embed_dim, attention_heads, dropout, depthwise_kernel)
            for _ in range(layers))
        self.pool_after = sorted(set(pool_after))
        self.pool = nn.MaxPool1d(kernel_size=2, stride=2, ceil_mode=True)
        self.embed_dim = embed_dim
        self.conv_layers = conv_layers
        self.downsample = 2 ** (conv_layers + len(self.pool_after))

    def output_lengths(self, src_lengths: torch.Tensor) -> torch.Tensor:
        """[B] input frames -> [B] exact output frames."""
        lengths = subsampled_lengths(src_lengths, self.conv_layers)
        for _ in self.pool_after:
            lengths = pooled_lengths(lengths)
        return lengths

    def _pool(self, x: torch.Tensor, padding_mask: torch.Tensor, lengths: torch.Tensor):
        """Max-pool [T, B, D] by 2 over time; padded frames never win the max."""
        x = x.masked_fill(padding_mask.t().unsqueeze(-1), float("-inf"))
        x = self.pool(x.permute(1, 2, 0)).permute(2, 0, 1)  # [ceil(T/2), B, D]
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
        for i, layer in enumerate(self.layers, start=1):
            x, _ = layer(x, padding_mask, pos_emb)
            if i in self.pool_after:
                x, padding_mask, lengths = self._pool(x, padding_mask, lengths)
                pos_emb = self.embed_positions(x)
        x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        return {
            "encoder_out": x.transpose(0, 1),
            "encoder_padding_mask": padding_mask,
            "encoder_lengths": lengths,
        }
