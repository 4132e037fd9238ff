"""The ``cif_hkd`` criterion: ``cif`` plus hierarchical knowledge distillation from a PLM.

    loss = cif terms (CE, CTC, quantity) + acd_weight * ACD + lrd_weight * LRD

- ACD (acoustic level): z_i = W_a c_i + b projects the CIF embedding of target position i to the
  teacher width; InfoNCE with temperature tau between the L2-normalised z_i and the normalised
  teacher state e_i, against K negatives e_k drawn uniformly without replacement from the batch's
  other target positions. K = ``--acd-negatives`` (paper: 700) when the batch has N > K positions,
  else floor(0.8 N) (``--acd-small-batch-ratio``). The authors draw from all N and give the token
  itself logit -1e9; drawing from the other N - 1 is the same distribution without the wasted slot.
  ``--acd-mask-same-token`` also gives negatives with the token's own id logit -1e9 (off in the paper).
  The share of positions whose positive beats every negative is logged as ``acd_acc``.
- LRD (linguistic level): u_i = W_l s_i + b on the decoder's pre-final state, squared error to e_i
  summed over dimensions (paper) or averaged (``--lrd-reduction mean``).

Every position of the target takes part, </s> included (it pairs with the PLM's [SEP]). Terms are
summed over the batch in float32; fairseq divides by the token count. Teacher states come from the
task's teacher store (``sample["teacher_states"]``) and are data: they get no gradient.

The projections are parameters of this criterion (fairseq's Trainer optimises and checkpoints
criterion parameters, and wraps a criterion with parameters in DDP); each exists only when its
weight is > 0, so DDP sees no unused parameters. The model itself is unchanged: generation and
transcription never need them. With both weights 0 this criterion is exactly ``cif``.

Usage::

    fairseq-hkd-extract-teacher --manifest data/train.tsv --plm-dir $PLM --unit wordpiece   # + valid
    fairseq-train data --user-dir fairseq_hkd --task cif_asr --unit wordpiece --tokenizer-dir $PLM \\
        --arch cif_conformer_paper --criterion cif_hkd --acd-weight 1.0 --lrd-weight 0.01 ...
"""
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from fairseq_hkd.criterions import losses
from fairseq_hkd.criterions.cif import CifCriterion, CifCriterionConfig, _ratio
from fairseq_hkd.errors import UserError
from fairseq_hkd.tasks.cif_asr import StudentDims

__all__ = ["CifHkdCriterion", "CifHkdCriterionConfig"]


@dataclass
class CifHkdCriterionConfig(CifCriterionConfig):
    acd_weight: float = field(default=1.0, metadata={"help": "weight of the acoustic contrastive distillation (0 = off)"})
    acd_temperature: float = field(default=0.02, metadata={"help": "ACD InfoNCE temperature tau"})
    acd_negatives: int = field(default=700, metadata={"help": "ACD negatives K per token (drawn from the batch)"})
    acd_small_batch_ratio: float = field(
        default=0.8, metadata={"help": "batches with N <= K target tokens use floor(ratio * N) negatives"})
    acd_mask_same_token: bool = field(
        default=False, metadata={"help": "ACD: negatives with the token's own id get logit -1e9"})
    lrd_weight: float = field(default=0.01, metadata={"help": "weight of the linguistic regression distillation (0 = off)"})
    lrd_reduction: ChoiceEnum(["sum", "mean"]) = field(
        default="sum", metadata={"help": "LRD squared error over teacher dimensions: sum (paper) or mean"})


@register_criterion("cif_hkd", dataclass=CifHkdCriterionConfig)
class CifHkdCriterion(CifCriterion):
    NAME = "cif_hkd"

    def __init__(self, cfg: CifHkdCriterionConfig, task):
        super().__init__(cfg, task)
        for name in ("acd_weight", "lrd_weight"):
            if getattr(cfg, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
        if cfg.acd_temperature <= 0 or cfg.acd_negatives < 0 or not 0.0 <= cfg.acd_small_batch_ratio < 1.0:
            raise UserError("need --acd-temperature > 0, --acd-negatives >= 0 and 0 <= --acd-small-batch-ratio < 1")
        self.weights.update(acd=cfg.acd_weight, lrd=cfg.lrd_weight)
        self.acd_proj = self.lrd_proj = None
        if cfg.acd_weight > 0 or cfg.lrd_weight > 0:
            teacher_dim = task.teacher_dim  # the task <-> criterion contract: docs/DESIGN.md, CifAsrTask
            if not teacher_dim:
                raise UserError(
                    "criterion cif_hkd needs teacher states, but the task found no teacher store for the "
                    "training split: run fairseq-hkd-extract-teacher for every split (or pass --teacher-dir), "
                    "or use --criterion cif")
            dims = StudentDims.of(task, "cif_hkd")  # ValueError when the model was not built first
            if cfg.acd_weight > 0:
                self.acd_proj = nn.Linear(dims.cif, teacher_dim)      # c_i [.., C] -> [.., D]
            if cfg.lrd_weight > 0:
                self.lrd_proj = nn.Linear(dims.decoder, teacher_dim)  # s_i [.., C'] -> [.., D]

    def compute_terms(self, model, sample):
        terms, net_output, stats = super().compute_terms(model, sample)
        if self.acd_proj is None and self.lrd_proj is None:
            return terms, net_output, stats
        teacher = sample.get("teacher_states")
        if teacher is None:
            if model.training:
                raise UserError("criterion cif_hkd: the batch has no teacher states; the training split needs a "
                                 "teacher store (fairseq-hkd-extract-teacher) and --load-teacher auto|yes")
            return terms, net_output, stats  # a validation split without a store: CIF terms only
        target = sample["target"]
        if teacher.shape[:2] != target.shape:
            raise ValueError(f"teacher states {tuple(teacher.shape)} do not fit the target {tuple(target.shape)}")
        embeddings = net_output["cif"].embeddings
        if embeddings.size(1) != target.size(1):
            raise ValueError(f"CIF gave {embeddings.size(1)} positions for targets of {target.size(1)}: "
                             f"distillation pairs position i with teacher state i and needs them equal")
        with torch.autocast(teacher.device.type, enabled=False):  # projections and losses in float32
            self._distillation_terms(net_output, target, teacher, terms, stats)
        return terms, net_output, stats

    def _distillation_terms(self, net_output, target, teacher, terms, stats) -> None:
        """Adds "acd" / "lrd" to ``terms`` (and ACD accuracy counts to ``stats``)."""
        embeddings = net_output["cif"].embeddings.float()
        keep = target.ne(self.padding_idx)                             # [B, S]
        e = teacher[keep]                                              # [N, D]
        if self.acd_proj is not None:
            c = embeddings[keep]                                       # [N, C]
            k = losses.acd_num_negatives(e.size(0), self.cfg.acd_negatives, self.cfg.acd_small_batch_ratio)
            negatives = losses.sample_negatives(e.size(0), k, device=e.device)
            tokens = target[keep] if self.cfg.acd_mask_same_token else None
            terms["acd"], correct = losses.acd_loss(_project(self.acd_proj, c), e, negatives, self.cfg.acd_temperature, tokens)
            stats["acd_correct"], stats["acd_total"] = int(correct), int(e.size(0))
        if self.lrd_proj is not None:
            s = net_output["decoder_states"][keep].float()             # [N, C']
            terms["lrd"] = losses.lrd_loss(_project(self.lrd_proj, s), e, self.cfg.lrd_reduction)

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, object]]) -> None:
        super().reduce_metrics(logging_outputs)
        if any("acd_total" in log for log in logging_outputs):
            for key in ("acd_correct", "acd_total"):
                metrics.log_scalar_sum(f"_{key}", sum(log.get(key, 0) for log in logging_outputs))
            metrics.log_derived("acd_acc", lambda m: _ratio(m, "_acd_correct", "_acd_total", 100))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _project(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``proj(x)`` in x's dtype (float32 here) also when fairseq's ``--fp16`` made the parameters half."""
    return F.linear(x, proj.weight.to(x.dtype), proj.bias.to(x.dtype))
