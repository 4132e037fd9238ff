"""A tiny stock-style model for testing the cif_asr task through fairseq-train without the CIF model:
``fairseq-train --user-dir tests/probe_plugin --task cif_asr --arch hkd_probe --criterion cross_entropy``.

It mean-pools the fbank, adds it to embeddings of ``prev_output_tokens`` and predicts the next token
(a decoder-only probe; enough for fairseq's own checkpoint, resume and loss code paths)."""
import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture

import fairseq_hkd  # noqa: F401  (registers cif_asr)


@register_model("hkd_probe")
class ProbeModel(BaseFairseqModel):
    def __init__(self, num_mel: int, vocab: int, dim: int = 16):
        super().__init__()
        self.proj = nn.Linear(num_mel, dim)
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    @classmethod
    def build_model(cls, args, task):
        return cls(80, len(task.target_dictionary))

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        # src_tokens [B, T, 80] -> [B, 1, dim] pooled over valid frames
        mask = (torch.arange(src_tokens.size(1))[None, :] < src_lengths[:, None]).float()
        pooled = (self.proj(src_tokens) * mask[..., None]).sum(1) / src_lengths[:, None].float()
        return self.out(torch.tanh(self.embed(prev_output_tokens) + pooled[:, None, :])), None

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return torch.log_softmax(logits, -1) if log_probs else torch.softmax(logits, -1)

    def get_targets(self, sample, net_output):
        return sample["target"]


@register_model_architecture("hkd_probe", "hkd_probe")
def probe_arch(args):
    pass
