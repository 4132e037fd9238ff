"""Decoders conditioned on the CIF integrated embeddings c_1..c_N (no encoder attention).

Shapes: B batch, S decoder steps, N integrated embeddings, C their size, D decoder size, V vocab.

Autoregressive (the paper's): step i reads x_i = W_in [sqrt(D) E(y_{i-1}); c_{i-1}] + P_i
(c_{-1} = 0, y_{-1} = </s>), runs pre-LN transformer layers with causal self-attention, then
s_i = W_out [LN(d_i); c_i] (the "pre-final state", LRD's input) and logits = W_proj s_i.
Non-autoregressive: x_i = W_in c_i + P_i, bidirectional self-attention over the N embeddings, the
same output head. Layers are fairseq's ``TransformerDecoderLayerBase`` without encoder attention,
so incremental decoding (``incremental_state``, beam reordering) is fairseq's.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.models import FairseqIncrementalDecoder
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import LayerNorm, PositionalEmbedding
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase

__all__ = ["CifDecoder"]

IncrementalState = Dict[str, Dict[str, Optional[torch.Tensor]]]


def _layer_config(embed_dim: int, ffn_embed_dim: int, heads: int, dropout: float,
                  attention_dropout: float, activation_dropout: float) -> TransformerConfig:
    cfg = TransformerConfig()
    cfg.decoder.embed_dim = embed_dim
    cfg.decoder.ffn_embed_dim = ffn_embed_dim
    cfg.decoder.attention_heads = heads
    cfg.decoder.normalize_before = True
    cfg.dropout = dropout
    cfg.attention_dropout = attention_dropout
    cfg.activation_dropout = activation_dropout
    return cfg


class CifDecoder(FairseqIncrementalDecoder):
    """Transformer decoder over CIF embeddings, autoregressive or not.

    Args:
        dictionary: target dictionary (V symbols, pad index used for token padding).
        cif_dim: C, size of the integrated embeddings.
        embed_dim / ffn_embed_dim / attention_heads / layers: D, FFN size, heads, depth.
        dropout / attention_dropout / activation_dropout: dropout rates in the layers.
        autoregressive: causal decoder fed with previous tokens (True) or NAR (False).
        share_input_output_embed: tie the output projection to the token embedding.
        max_positions: initial size of the sinusoidal table (grows on demand).
    """

    def __init__(self, dictionary, cif_dim: int, embed_dim: int, ffn_embed_dim: int,
                 attention_heads: int, layers: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, autoregressive: bool = True,
                 share_input_output_embed: bool = False, max_positions: int = 1024):
        super().__init__(dictionary)
        self.autoregressive = autoregressive
        self.padding_idx = dictionary.pad()
        self.embed_dim = embed_dim
        self.cif_dim = cif_dim
        self.max_target_positions = max_positions
        vocab = len(dictionary)
        self.embed_tokens = None
        if autoregressive:
            self.embed_tokens = nn.Embedding(vocab, embed_dim, padding_idx=self.padding_idx)
            nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=embed_dim ** -0.5)
            nn.init.zeros_(self.embed_tokens.weight[self.padding_idx])
        self.embed_scale = math.sqrt(embed_dim)
        in_dim = embed_dim + cif_dim if autoregressive else cif_dim
        self.input_proj = nn.Linear(in_dim, embed_dim)
        self.embed_positions = PositionalEmbedding(max_positions, embed_dim, self.padding_idx)
        self.dropout = nn.Dropout(dropout)
        cfg = _layer_config(embed_dim, ffn_embed_dim, attention_heads, dropout, attention_dropout,
                            activation_dropout)
        self.layers = nn.ModuleList(
            TransformerDecoderLayerBase(cfg, no_encoder_attn=True) for _ in range(layers))
        self.layer_norm = LayerNorm(embed_dim)
        self.output_proj = nn.Linear(embed_dim + cif_dim, embed_dim)
        self.output_projection = nn.Linear(embed_dim, vocab, bias=False)
        if share_input_output_embed:
            if not autoregressive:
                raise ValueError("share_input_output_embed needs the autoregressive decoder")
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=embed_dim ** -0.5)

    def max_positions(self) -> int:
        return self.max_target_positions

    # 1. inputs --------------------------------------------------------------------------------
    def _ar_inputs(self, prev_output_tokens: torch.Tensor, cif_embeddings: torch.Tensor,
                   incremental_state: Optional[IncrementalState]):
        """-> (x [B, S', D], c_i [B, S', C]); S' = 1 when decoding incrementally."""
        steps, n = prev_output_tokens.size(1), cif_embeddings.size(1)
        if steps > n:
            raise ValueError(
                f"the decoder was given {steps} previous tokens but only {n} CIF embeddings; "
                "an autoregressive CIF decoder takes exactly one step per integrated embedding")
        positions = self.embed_positions(prev_output_tokens, incremental_state=incremental_state)
        if incremental_state is not None:
            tokens = prev_output_tokens[:, -1:]
            c_cur = cif_embeddings[:, steps - 1:steps]
            c_prev = (cif_embeddings[:, steps - 2:steps - 1] if steps > 1
                      else cif_embeddings.new_zeros(c_cur.shape))
        else:
            tokens = prev_output_tokens
            c_cur = cif_embeddings[:, :steps]
            c_prev = torch.cat([cif_embeddings.new_zeros(c_cur[:, :1].shape), c_cur[:, :-1]], dim=1)
        emb = self.embed_scale * self.embed_tokens(tokens)
        x = self.input_proj(torch.cat([emb, c_prev.to(emb.dtype)], dim=-1)) + positions
        return x, c_cur

    def _nar_inputs(self, cif_embeddings: torch.Tensor, cif_padding_mask: Optional[torch.Tensor]):
        """-> (x [B, N, D], c [B, N, C])."""
        if cif_padding_mask is None:
            cif_padding_mask = cif_embeddings.new_zeros(cif_embeddings.shape[:2], dtype=torch.bool)
        # the sinusoidal table numbers non-pad "tokens" 1..n; pad positions get a zero vector
        pseudo_tokens = torch.where(cif_padding_mask, self.padding_idx, self.padding_idx + 1)
        x = self.input_proj(cif_embeddings) + self.embed_positions(pseudo_tokens)
        return x, cif_embeddings

    # 2. layers and output head ----------------------------------------------------------------
    def forward(self, prev_output_tokens: Optional[torch.Tensor], cif_embeddings: torch.Tensor,
                cif_padding_mask: Optional[torch.Tensor] = None,
                incremental_state: Optional[IncrementalState] = None,
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """
        Args:
            prev_output_tokens: [B, S] = [</s>, y_0 .. y_{S-2}] (pad = dictionary.pad()); with
                ``incremental_state`` the whole prefix, of which only the last token is new.
                Ignored (may be None) by the NAR decoder.
            cif_embeddings: [B, N, C], N >= S (AR); zero beyond each utterance's length.
            cif_padding_mask: [B, N] True beyond each utterance's length (NAR attention mask).
            incremental_state: fairseq's cache dict for step-by-step decoding (AR only).
        Returns:
            logits [B, S', V] (S' = S, N for NAR, 1 incrementally), {"states": [B, S', D]}.
        """
        if self.autoregressive:
            x, c_cur = self._ar_inputs(prev_output_tokens, cif_embeddings, incremental_state)
            # tokens are right-padded, so the causal mask already hides padding from real steps
            key_padding_mask = None
            attn_mask = self._future_mask(x) if incremental_state is None else None
        else:
            if incremental_state is not None:
                raise ValueError("the non-autoregressive decoder has no incremental mode")
            x, c_cur = self._nar_inputs(cif_embeddings, cif_padding_mask)
            key_padding_mask, attn_mask = cif_padding_mask, None
        x = self.dropout(x).transpose(0, 1)  # [S', B, D]
        for layer in self.layers:
            x, _, _ = layer(x, incremental_state=incremental_state, self_attn_mask=attn_mask,
                            self_attn_padding_mask=key_padding_mask)
        x = self.layer_norm(x).transpose(0, 1)  # [B, S', D]
        states = self.output_proj(torch.cat([x, c_cur.to(x.dtype)], dim=-1))
        return self.output_projection(states), {"states": states}

    @staticmethod
    def _future_mask(x: torch.Tensor) -> torch.Tensor:
        """[S, S] float mask, -inf above the diagonal (step i sees steps <= i)."""
        steps = x.size(1)
        return utils.fill_with_neg_inf(x.new_zeros(steps, steps, dtype=torch.float32)).triu(1).to(x)
