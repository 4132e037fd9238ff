"""The CIF speech recognizer (``cif_transformer``) and its architectures.

Shapes: B batch, T fbank frames, T' encoder frames, D encoder size, N fired tokens, S target
length (incl. </s>), V vocabulary.

    fbank -> ConformerEncoder -> h [B, T', D] -+-> CTC head -> ctc_logits [B, T', V]
                                               +-> CifMiddleware -> alpha [B, T'], c [B, N, D]
                                                                       -> CifDecoder -> logits [B, N, V]

Architectures (``--arch``):
  cif_conformer_paper       the authors' AISHELL-1 model: one conv2d (k=3, stride 2, 128 ch) ->
                            Linear 256, 15 conformer layers (d=256, FFN 2048, 4 heads, rel-pos,
                            kernel 15), max-pooling after layers 5 and 10 (8x: 80 ms frames),
                            CIF predictor conv k=3, 2-layer AR decoder d=256 (dropout 0.2).
                            47.2 M parameters with AISHELL-1's 4,234 symbols (authors: 47.2 M).
  cif_conformer_librispeech English 960 h with word-piece units (~3-5 units/s): two conv2d
                            layers (4x) and pooling after layer 8 (8x, 80 ms: >= 2.5 frames per
                            unit even for fast speakers), 16 layers d=512, 8 heads, FFN 2048,
                            kernel 31 (the "large" conformer size that 960 h supports: 104 M in
                            the encoder), 4-layer decoder d=512; 166 M in all with BERT's
                            30,522 word pieces (the vocabulary layers are 47 M of it). For character units
                            (~15/s) use --encoder-pool-after '' (40 ms frames).
  cif_tiny                  tests and the synthesized demo: two conv2d layers (4x, 40 ms frames:
                            ~2 frames per character of espeak speech), 4 conformer layers d=144,
                            FFN 576, kernel 15, no pooling, 2-layer decoder d=144, light dropout;
                            2.8 M parameters with 30 symbols; trains in minutes on 2 CPU cores.
"""
import logging
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture

from fairseq_hkd.errors import UserError
from fairseq_hkd.models.cif_decoder import CifDecoder
from fairseq_hkd.models.cif_middleware import CifMiddleware
from fairseq_hkd.models.dropout import use_packed_dropout
from fairseq_hkd.models.conformer_encoder import ConformerEncoder, lengths_to_padding_mask

logger = logging.getLogger(__name__)

__all__ = ["CifModel", "CifModelConfig"]

DECODER_TYPES = ChoiceEnum(["autoregressive", "non_autoregressive"])


@dataclass
class CifModelConfig(FairseqDataclass):
    """Defaults are the paper's AISHELL-1 model (``--arch cif_conformer_paper``)."""

    input_feat_dim: int = field(default=80, metadata={"help": "fbank dimension F"})
    # encoder
    subsample_layers: int = field(
        default=1, metadata={"help": "stride-2 conv2d layers (k=3) in the front end; 1 in the paper (2x)"})
    subsample_channels: int = field(default=128, metadata={"help": "channels of the stride-2 conv2d layers"})
    encoder_embed_dim: int = field(default=256, metadata={"help": "conformer model size D (also the CIF size)"})
    encoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "conformer feed-forward inner size"})
    encoder_attention_heads: int = field(default=4, metadata={"help": "conformer attention heads"})
    encoder_layers: int = field(default=15, metadata={"help": "conformer layers"})
    depthwise_conv_kernel_size: int = field(default=15, metadata={"help": "conformer depthwise conv kernel (odd)"})
    encoder_pool_after: str = field(
        default="5,10",
        metadata={"help": "comma-separated 1-based conformer layers followed by max-pooling x2 over time "
                          "('' = no pooling); total downsampling is 2^(subsample_layers + pools)"})
    encoder_input_scale: ChoiceEnum(["none", "sqrt_d"]) = field(
        default="none",
        metadata={"help": "multiply the subsampled input by sqrt(D) before the first conformer layer "
                          "(sqrt_d, as fairseq's S2T conformer, which the authors trained) or not (none). "
                          "Every recipe uses sqrt_d (synthesized demo, heldout at 800 updates: WER 48.5 vs "
                          "80.3); the default stays none so that checkpoints trained before the option "
                          "existed (which have no value for it) load unchanged"})
    encoder_causal_conv: bool = field(
        default=False,
        metadata={"help": "conformer depthwise convolutions see no future frames (left padding only); needed "
                          "for exact chunk-by-chunk streaming (issue 17)"})
    encoder_chunk_size: int = field(
        default=0,
        metadata={"help": "train (and decode offline) with self-attention restricted to chunks of this many "
                          "encoder output frames plus --encoder-left-chunks chunks of left context; 0 = full "
                          "context"})
    dynamic_chunk_training: bool = field(
        default=False,
        metadata={"help": "draw the attention chunk per batch as U2/WeNet do: full context for about half the "
                          "batches, else 1..--max-chunk-size output frames; one model then streams at any chunk "
                          "size; offline decoding uses full context"})
    max_chunk_size: int = field(
        default=32, metadata={"help": "largest chunk (encoder output frames) that dynamic chunk training draws"})
    encoder_left_chunks: int = field(
        default=-1, metadata={"help": "chunks of left context a frame attends to with chunked attention (-1: all)"})
    dropout: float = field(default=0.1, metadata={"help": "encoder dropout"})
    max_source_positions: int = field(default=3000, metadata={"help": "initial relative-position table size"})
    dropout_impl: ChoiceEnum(["packed", "torch"]) = field(
        default="torch",
        metadata={"help": "dropout masks on CPU: packed (three masks per 64-bit random draw, p rounded to "
                          "1/65536; mask generation alone is ~3x cheaper than torch's per-element Bernoulli "
                          "draws, but full training steps showed no wall-clock gain on an AVX2 CPU, see "
                          "BENCHMARKS.md) or torch's; GPUs always use torch's fused dropout"})
    # CIF
    cif_threshold: float = field(default=1.0, metadata={"help": "CIF firing threshold beta"})
    cif_tail_threshold: float = field(
        default=0.5, metadata={"help": "emit a last token when the leftover weight exceeds this"})
    cif_conv_kernel: int = field(default=3, metadata={"help": "weight predictor conv1d kernel (odd)"})
    cif_dropout: float = field(default=0.2, metadata={"help": "weight predictor dropout (between conv and linear)"})
    # decoder
    decoder_type: DECODER_TYPES = field(
        default="autoregressive",
        metadata={"help": "autoregressive (causal, fed y_{i-1} and c_{i-1}) or non_autoregressive (c_i only)"})
    decoder_embed_dim: int = field(default=256, metadata={"help": "decoder size"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "decoder feed-forward inner size"})
    decoder_attention_heads: int = field(default=4, metadata={"help": "decoder attention heads"})
    decoder_layers: int = field(default=2, metadata={"help": "decoder layers"})
    decoder_dropout: float = field(default=0.2, metadata={"help": "decoder dropout"})
    decoder_attention_dropout: float = field(default=0.1, metadata={"help": "decoder attention dropout"})
    decoder_activation_dropout: float = field(default=0.1, metadata={"help": "decoder FFN activation dropout"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "tie the decoder's output projection to its token embedding"})
    max_target_positions: int = field(default=1024, metadata={"help": "initial decoder position table size"})


def parse_pool_after(spec: str) -> List[int]:
    """'5,10' -> [5, 10]; '' -> []."""
    try:
        return [int(x) for x in str(spec).replace(" ", "").split(",") if x]
    except ValueError:
        raise UserError(f"--encoder-pool-after must be comma-separated layer numbers, got {spec!r}") from None


def check_options(cfg: CifModelConfig) -> None:
    """Raise a one-line :class:`UserError` naming the option for model options the modules cannot build
    (the modules keep their own checks for programmatic use; fairseq's attention would only assert).
    Options absent from an older checkpoint's config are skipped."""
    def opt(name, default=None):
        return getattr(cfg, name, default)

    problems = []
    for size, heads in (("encoder_embed_dim", "encoder_attention_heads"), ("decoder_embed_dim", "decoder_attention_heads")):
        if opt(heads) is not None and (opt(heads) < 1 or opt(size) % opt(heads)):
            problems.append(f"--{size.replace('_', '-')} {opt(size)} must be a multiple of "
                            f"--{heads.replace('_', '-')} {opt(heads)} (>= 1)")
    for name in ("depthwise_conv_kernel_size", "cif_conv_kernel"):
        if opt(name) is not None and (opt(name) < 1 or opt(name) % 2 != 1):
            problems.append(f"--{name.replace('_', '-')} must be odd and positive, got {opt(name)}")
    if opt("subsample_layers") is not None and opt("subsample_layers") < 1:
        problems.append(f"--subsample-layers must be >= 1, got {opt('subsample_layers')}")
    bad = [i for i in parse_pool_after(opt("encoder_pool_after", "")) if not 1 <= i <= opt("encoder_layers")]
    if bad:
        problems.append(f"--encoder-pool-after {opt('encoder_pool_after')!r}: layers {bad} are outside "
                        f"1..{opt('encoder_layers')} (--encoder-layers)")
    for name in ("dropout", "cif_dropout", "decoder_dropout", "decoder_attention_dropout", "decoder_activation_dropout"):
        if opt(name) is not None and not 0.0 <= opt(name) <= 1.0:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1], got {opt(name)}")
    if opt("cif_threshold") is not None and not opt("cif_threshold") > 0:
        problems.append(f"--cif-threshold must be > 0, got {opt('cif_threshold')}")
    if (opt("encoder_chunk_size") or 0) < 0 or (opt("max_chunk_size") or 32) < 1:
        problems.append(f"--encoder-chunk-size must be >= 0 and --max-chunk-size >= 1, got "
                        f"{opt('encoder_chunk_size')} and {opt('max_chunk_size')}")
    if (opt("encoder_chunk_size") or 0) > 0 and opt("dynamic_chunk_training"):
        problems.append("give --encoder-chunk-size or --dynamic-chunk-training, not both")
    if opt("share_decoder_input_output_embed") and opt("decoder_type", "autoregressive") != "autoregressive":
        problems.append("--share-decoder-input-output-embed needs --decoder-type autoregressive")
    if problems:
        raise UserError(f"--arch {opt('_name') or 'cif_transformer'}: " + "; ".join(problems))


@register_model("cif_transformer", dataclass=CifModelConfig)
class CifModel(BaseFairseqModel):
    """Conformer encoder + CTC head + CIF + decoder. See the module docstring for the data flow."""

    def __init__(self, cfg: CifModelConfig, encoder: ConformerEncoder, ctc_proj: nn.Linear,
                 cif: CifMiddleware, decoder: CifDecoder):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.ctc_proj = ctc_proj
        self.cif = cif
        self.decoder = decoder
        self.encoder_embed_dim = cfg.encoder_embed_dim  # size of the CIF embeddings c_i
        self.decoder_embed_dim = cfg.decoder_embed_dim  # size of the pre-final states s_i

    @classmethod
    def build_model(cls, cfg: CifModelConfig, task):
        check_options(cfg)
        tgt_dict = task.target_dictionary
        if tgt_dict.bos() != 0:
            raise UserError(f"CTC uses index 0 as blank; the dictionary's index 0 is {tgt_dict[0]!r}, not <s>")
        encoder = ConformerEncoder(
            cfg.input_feat_dim, cfg.subsample_channels, cfg.subsample_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim,
            cfg.encoder_attention_heads, cfg.encoder_layers, cfg.depthwise_conv_kernel_size,
            parse_pool_after(cfg.encoder_pool_after), cfg.dropout, cfg.max_source_positions,
            input_scale=cfg.encoder_embed_dim ** 0.5 if getattr(cfg, "encoder_input_scale", "none") == "sqrt_d" else 1.0,
            # streaming options (issue 17); checkpoints from before they existed have none: off
            causal_conv=bool(getattr(cfg, "encoder_causal_conv", False) or False),
            chunk_size=int(getattr(cfg, "encoder_chunk_size", 0) or 0),
            dynamic_chunk=bool(getattr(cfg, "dynamic_chunk_training", False) or False),
            left_chunks=int(-1 if getattr(cfg, "encoder_left_chunks", None) is None else cfg.encoder_left_chunks),
            max_chunk=int(getattr(cfg, "max_chunk_size", 32) or 32))
        ctc_proj = nn.Linear(cfg.encoder_embed_dim, len(tgt_dict))
        cif = CifMiddleware(cfg.encoder_embed_dim, cfg.cif_conv_kernel, cfg.cif_dropout, cfg.cif_threshold,
                            cfg.cif_tail_threshold)
        decoder = CifDecoder(
            tgt_dict, cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.decoder_ffn_embed_dim,
            cfg.decoder_attention_heads, cfg.decoder_layers, cfg.decoder_dropout, cfg.decoder_attention_dropout,
            cfg.decoder_activation_dropout, autoregressive=cfg.decoder_type == "autoregressive",
            share_input_output_embed=cfg.share_decoder_input_output_embed,
            max_positions=cfg.max_target_positions)
        model = cls(cfg, encoder, ctc_proj, cif, decoder)
        if cfg.dropout_impl == "packed":
            use_packed_dropout(model)
        logger.info(f"CIF model: {model.num_parameters() / 1e6:.2f} M parameters "
                    f"(encoder {_count(encoder) / 1e6:.2f} M, CTC {_count(ctc_proj) / 1e6:.2f} M, "
                    f"CIF {_count(cif) / 1e6:.2f} M, decoder {_count(decoder) / 1e6:.2f} M), "
                    f"{encoder.downsample}x downsampling")
        return model

    def num_parameters(self) -> int:
        return _count(self)

    def max_positions(self):
        return self.cfg.max_source_positions * self.encoder.downsample, self.decoder.max_positions()

    def encoder_output_lengths(self, src_lengths: torch.Tensor) -> torch.Tensor:
        """[B] fbank frames -> [B] encoder frames. Teacher-forced training needs S <= this
        (a frame carries at most one token); tasks can filter on it before batching."""
        return self.encoder.output_lengths(src_lengths)

    # steps used by criterions and the generator ------------------------------------------------
    def forward_encoder(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> Dict[str, torch.Tensor]:
        """src_tokens [B, T, F], src_lengths [B] -> dict(encoder_out [B, T', D],
        encoder_padding_mask [B, T'] (True = pad), encoder_lengths [B])."""
        return self.encoder(src_tokens, src_lengths)

    def forward_ctc(self, encoder: Dict[str, torch.Tensor]) -> torch.Tensor:
        """-> ctc_logits [B, T', V] (blank = index 0)."""
        return self.ctc_proj(encoder["encoder_out"])

    def forward_cif(self, encoder: Dict[str, torch.Tensor], target_lengths: Optional[torch.Tensor] = None,
                    tail_threshold: Optional[float] = None):
        """-> (alpha [B, T'] raw float32 weights, CifOutput). With ``target_lengths`` [B] the weights
        are scaled to fire exactly S_b tokens (teacher forcing); otherwise N is predicted."""
        return self.cif(encoder["encoder_out"], encoder["encoder_padding_mask"], target_lengths, tail_threshold)

    def forward(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor,
                prev_output_tokens: Optional[torch.Tensor] = None,
                target_lengths: Optional[torch.Tensor] = None, **unused) -> Dict[str, object]:
        """See docs/DESIGN.md ("Model"). ``prev_output_tokens`` [B, S] is needed by the AR decoder
        (teacher forcing, with ``target_lengths``); the NAR decoder ignores it."""
        encoder = self.forward_encoder(src_tokens, src_lengths)
        alpha, cif_out = self.forward_cif(encoder, target_lengths)
        cif_padding_mask = lengths_to_padding_mask(cif_out.lengths, cif_out.embeddings.size(1))
        if self.decoder.autoregressive and prev_output_tokens is None:
            raise ValueError("the autoregressive CIF decoder needs prev_output_tokens (use the generator to decode)")
        logits, extra = self.decoder(prev_output_tokens, cif_out.embeddings, cif_padding_mask)
        return {
            **encoder,
            "ctc_logits": self.forward_ctc(encoder),
            "alpha": alpha,
            "cif": cif_out,
            "cif_padding_mask": cif_padding_mask,
            "decoder_logits": logits,
            "decoder_states": extra["states"],
        }

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """Accepts the model's dict (decoder logits) or the decoder's (logits, extra) tuple."""
        logits = net_output["decoder_logits"] if isinstance(net_output, dict) else net_output[0]
        logits = logits.float()
        return torch.log_softmax(logits, dim=-1) if log_probs else torch.softmax(logits, dim=-1)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# architectures -------------------------------------------------------------------------------
ARCHITECTURES: Dict[str, Dict[str, object]] = {
    "cif_conformer_paper": {},  # the config defaults
    "cif_conformer_librispeech": dict(
        subsample_layers=2, subsample_channels=256, encoder_embed_dim=512, encoder_ffn_embed_dim=2048,
        encoder_attention_heads=8, encoder_layers=16, depthwise_conv_kernel_size=31, encoder_pool_after="8",
        decoder_embed_dim=512, decoder_ffn_embed_dim=2048, decoder_attention_heads=8, decoder_layers=4),
    "cif_tiny": dict(
        subsample_layers=2, subsample_channels=32, encoder_embed_dim=144, encoder_ffn_embed_dim=576,
        encoder_attention_heads=4, encoder_layers=4, depthwise_conv_kernel_size=15, encoder_pool_after="",
        dropout=0.1, cif_dropout=0.1, decoder_embed_dim=144, decoder_ffn_embed_dim=576,
        decoder_attention_heads=4, decoder_layers=2, decoder_dropout=0.1, decoder_attention_dropout=0.0,
        decoder_activation_dropout=0.0),
}
# cif_tiny at the paper's 80 ms frame rate, for word-piece units (the demo: ~3 units/s, so >= 4
# frames per unit): three stride-2 conv2d layers (8x) instead of two, everything else as cif_tiny.
ARCHITECTURES["cif_tiny_80ms"] = dict(ARCHITECTURES["cif_tiny"], subsample_layers=3)
# the same rate reached as in the paper: 4x conv2d, max-pooling after the first conformer layer
ARCHITECTURES["cif_tiny_pool"] = dict(ARCHITECTURES["cif_tiny"], encoder_pool_after="1")


def _register_architecture(name: str, overrides: Dict[str, object]) -> None:
    unknown = set(overrides) - {f.name for f in fields(CifModelConfig)}
    assert not unknown, f"{name}: unknown fields {unknown}"

    def apply(cfg):
        # fairseq leaves options the user did not give as None; fill them from the architecture,
        # then from the dataclass defaults (bool options default to False, which is kept)
        for f in fields(CifModelConfig):
            if getattr(cfg, f.name, None) is None:
                setattr(cfg, f.name, overrides.get(f.name, f.default))

    register_model_architecture("cif_transformer", name)(apply)


for _name, _overrides in ARCHITECTURES.items():
    _register_architecture(_name, _overrides)
