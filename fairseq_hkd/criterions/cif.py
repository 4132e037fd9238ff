"""The ``cif`` criterion: label-smoothed CE + CTC + quantity loss.

    loss = ce_weight * CE_ls(decoder) + ctc_weight * CTC(encoder) + quantity_weight * sum_b |sum alpha - S_b|

every term summed over the batch in float32; fairseq divides by sample_size (= ntokens). The decoder
is teacher-forced on CIF embeddings from weights scaled to fire exactly S_b tokens (the model
raises if they do not). Subclasses (``cif_hkd``) add terms: :meth:`CifCriterion.compute_terms`
returns the named terms and the net output, ``self.weights`` maps term names to weights.

A NaN/inf term raises :class:`~fairseq_hkd.criterions.guards.NonFiniteLossError` naming the term and
the utterances; ``--nonfinite-loss skip`` instead skips the batch (zero loss and gradients, a warning,
``nonfinite_skipped`` in the log). Non-finite inputs (features, teacher states) are always an error.
A training forward pass computed in float16 (``--fp16``, float16 autocast) whose terms are NaN/inf
from finite inputs overflowed: :meth:`CifCriterion.overflow_batch` hands it to fairseq's fp16
overflow path (update skipped, loss scale lowered), in either mode.

Usage::

    fairseq-train DATA --user-dir fairseq_hkd --task cif_asr --arch cif_tiny \\
        --criterion cif --label-smoothing 0.1 --ctc-weight 0.5 --quantity-weight 1.0 ...
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from fairseq_hkd.criterions import ctc_align, guards, losses
from fairseq_hkd.errors import UserError

__all__ = ["CifCriterion", "CifCriterionConfig"]

logger = logging.getLogger(__name__)


@dataclass
class CifCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing epsilon of the decoder CE"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the decoder cross-entropy"})
    ctc_weight: float = field(default=0.5, metadata={"help": "weight of the CTC loss on the encoder (0 = off)"})
    quantity_weight: float = field(default=1.0, metadata={"help": "weight of the CIF quantity loss"})
    segment_count_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the segment count loss (criterions/ctc_align.py): the CIF weights between "
                          "two labels of the CTC head's best path must carry 1 +- --segment-count-slack units "
                          "(0 = off)"})
    segment_count_slack: float = field(default=0.5, metadata={"help": "allowed distance of an inner segment's "
                                                                      "weights from one unit"})
    segment_count_start: int = field(default=0, metadata={"help": "first update of the segment count loss "
                                                                  "(the CTC head's alignments are noise at first)"})
    nonfinite_loss: ChoiceEnum(["error", "skip"]) = field(
        default="error",
        metadata={"help": "a NaN/inf loss term: stop with an error naming the term and utterances, or skip the "
                          "batch (zero loss and gradients, a warning with the utterance ids, counted in the "
                          "log as nonfinite_skipped). A float16 forward pass that overflows takes fairseq's fp16 "
                          "overflow path instead in both modes (update skipped, loss scale lowered)"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("cif", dataclass=CifCriterionConfig)
class CifCriterion(FairseqCriterion):
    NAME = "cif"  # --criterion, for messages
    # logged terms expressed in bits per token, like fairseq's loss/nll_loss; others per token
    BASE2_KEYS = ("loss", "nll_loss", "ce_loss", "ctc_loss")
    # sub-modules a checkpoint's criterion state may hold or lack: cif_hkd's distillation projections
    # (each exists only when its weight is > 0), see load_state_dict
    OPTIONAL_MODULES = ("acd_proj", "lrd_proj")
    # fairseq_hkd.compat: the Trainer hands the checkpoint's criterion state to load_state_dict even
    # when this criterion has no parameters (fairseq 0.12 would drop it without a word)
    load_state_without_parameters = True

    def __init__(self, cfg: CifCriterionConfig, task):
        super().__init__(task)
        for name in ("ce_weight", "ctc_weight", "quantity_weight", "segment_count_weight"):
            if getattr(cfg, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
        self.cfg = cfg
        self.eps = cfg.label_smoothing
        self.sentence_avg = cfg.sentence_avg
        self.blank_idx = task.target_dictionary.bos()
        self.eos_idx = task.target_dictionary.eos()
        self.weights: Dict[str, float] = {"ce": cfg.ce_weight, "ctc": cfg.ctc_weight, "quantity": cfg.quantity_weight}
        if cfg.segment_count_weight > 0:
            self.weights["segment"] = cfg.segment_count_weight
        self.num_updates = 0

    def set_num_updates(self, num_updates: int) -> None:
        """Called by the task's train_step (the segment count loss starts at --segment-count-start)."""
        self.num_updates = num_updates

    # 0. checkpoints ---------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, *args, **kwargs):
        """fairseq's Trainer loads ``state["criterion"]`` strictly (None when the checkpoint's
        criterion had no parameters). The distillation projections may differ between runs, as
        when cif_hkd starts from a cif checkpoint (``--finetune-from-model``, or ``--restore-file``
        with ``--reset-optimizer``) or cif from a cif_hkd one: a projection this criterion has and
        the checkpoint lacks keeps its fresh initialisation, one the checkpoint has and this
        criterion lacks is dropped; each case is logged. Everything else loads strictly (a
        projection of another shape, e.g. from a teacher of another width, is an error)."""
        state = dict(state_dict or {})
        own = [m for m in self.OPTIONAL_MODULES if getattr(self, m, None) is not None]
        saved = [m for m in self.OPTIONAL_MODULES if any(k.startswith(m + ".") for k in state)]
        fresh = [m for m in own if m not in saved]
        dropped = [m for m in saved if m not in own]
        if fresh:
            logger.info(f"criterion {self.NAME}: the checkpoint has no {', '.join(fresh)} (it was trained with "
                        f"another criterion or distillation weights): starting from a fresh initialisation")
            state.update({k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in fresh})
        if dropped:
            logger.info(f"criterion {self.NAME}: dropping the checkpoint's {', '.join(dropped)} (cif_hkd's "
                        f"distillation projections; this criterion has none)")
            state = {k: v for k, v in state.items() if k.split(".", 1)[0] not in dropped}
        return super().load_state_dict(state, strict, *args, **kwargs)

    # 1. the terms -----------------------------------------------------------------------------
    def compute_terms(self, model, sample) -> Tuple[Dict[str, torch.Tensor], Dict[str, object], Dict[str, object]]:
        """-> (terms {"ce", "nll", "ctc", "quantity"}: summed float32 losses,
               net_output (the model's dict), stats: summable counts for the log)."""
        target, target_lengths = sample["target"], sample["target_lengths"]
        net_output = model(**sample["net_input"], target_lengths=target_lengths)
        # 1a. decoder CE (teacher forcing; N == S is guaranteed by the model)
        ce, nll = losses.label_smoothed_ce(net_output["decoder_logits"], target, self.eps, self.padding_idx)
        terms = {"ce": ce, "nll": nll}
        # 1b. CTC on the encoder
        stats: Dict[str, object] = {}
        if self.weights["ctc"] > 0:
            terms["ctc"], infeasible = losses.ctc_loss(
                net_output["ctc_logits"], net_output["encoder_lengths"], target, self.padding_idx,
                self.eos_idx, self.blank_idx)
            stats["ctc_infeasible"] = int(infeasible.sum())
        # 1c. quantity on the raw weights
        alpha = net_output["alpha"]
        terms["quantity"] = losses.quantity_loss(alpha, target_lengths)
        cif = model.cif
        predicted = losses.predicted_token_counts(alpha.detach(), cif.threshold, cif.tail_threshold)
        stats["fire_correct"] = int((predicted == target_lengths.to(predicted)).sum())
        if "segment" in self.weights and model.training and self.num_updates >= self.cfg.segment_count_start:
            labels, label_lengths = losses.ctc_labels(target, self.padding_idx, self.eos_idx)
            first, ok = ctc_align.ctc_first_frames(net_output["ctc_logits"], net_output["encoder_lengths"],
                                                   labels, label_lengths, self.blank_idx)
            terms["segment"], outside = ctc_align.segment_count_loss(
                alpha, first, label_lengths, net_output["encoder_lengths"], ok, self.cfg.segment_count_slack)
            stats["segments_outside"] = int(outside)
        # 1d. teacher-forced token errors (validation only)
        if not model.training:
            errors, total = losses.token_errors(net_output["decoder_logits"], target, self.padding_idx)
            stats["tf_errors"], stats["tf_total"] = int(errors), int(total)
        return terms, net_output, stats

    def weighted_loss(self, terms: Dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in terms.items() if name in self.weights)

    # 2. fairseq interface ----------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        guards.check_inputs(sample)  # NaN/inf features or teacher states: an error naming the utterances
        terms, net_output, stats = self.compute_terms(model, sample)
        nonfinite = guards.nonfinite_message(terms, sample)  # NaN/inf: names the term and the utterances
        if nonfinite is not None:
            if model.training and guards.float16_forward(net_output):
                return self.overflow_batch(model, terms, stats, sample)
            if self.cfg.nonfinite_loss != "skip":
                raise guards.NonFiniteLossError(nonfinite)
            return self.skipped_batch(model, terms, stats, nonfinite)
        loss = self.weighted_loss(terms)
        sample_size = sample["nsentences"] if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": utils.item(loss.data),
            "nll_loss": utils.item(terms["nll"].data),
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
            **{f"{name}_loss": utils.item(value.data) for name, value in terms.items() if name != "nll"},
            **stats,
            **({"nonfinite_skipped": 0} if self.cfg.nonfinite_loss == "skip" else {}),  # same keys on all ranks
        }
        return loss, sample_size, logging_output

    def skipped_batch(self, model, terms, stats, message: str):
        """``--nonfinite-loss skip``: a zero loss giving every model and criterion parameter a zero
        gradient, sample size 0 (the batch does not count in the update's normalisation), and a
        logging output with the same keys as a normal one, all 0 but ``nonfinite_skipped`` = 1
        (ranks all-reduce the logs key by key, so every rank must log the same keys)."""
        logger.warning(f"{message} Batch skipped (--nonfinite-loss skip).")
        return guards.zero_loss(model, self), 0, self._zero_logging_output(terms, stats, skipped=1)

    def overflow_batch(self, model, terms, stats, sample):
        """A training batch whose float16 forward pass overflowed (non-finite terms, finite inputs):
        a loss whose backward gives every model and criterion parameter a gradient, inf in one
        element each, so that fairseq treats it as its own models' fp16 overflow: the loss scaler
        raises OverflowError at the gradient norm, the Trainer skips the update (gradients zeroed,
        update count unchanged) and lowers the loss scale; persistent overflow ends in fairseq's
        "Minimum loss scale reached" error. The logging output has a normal batch's keys, all 0
        (the Trainer discards it; ranks all-reduce it first)."""
        logger.info(guards.overflow_message(terms, sample))
        return guards.overflow_loss(model, self), 0, self._zero_logging_output(terms, stats, skipped=0)

    def _zero_logging_output(self, terms, stats, skipped: int) -> Dict[str, object]:
        """A normal batch's logging keys (ranks all-reduce the logs key by key), all 0, and
        ``nonfinite_skipped`` = ``skipped`` in skip mode."""
        return {"loss": 0.0, "nll_loss": 0.0, "ntokens": 0, "nsentences": 0, "sample_size": 0,
                **{f"{name}_loss": 0.0 for name in terms if name != "nll"}, **{key: 0 for key in stats},
                **({"nonfinite_skipped": skipped} if self.cfg.nonfinite_loss == "skip" else {})}

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, object]]) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        ntokens = total("ntokens")
        keys = sorted({k for log in logging_outputs for k in log if k.endswith("_loss") or k == "loss"})
        for key in keys:
            denom = ntokens if key == "nll_loss" else sample_size
            value = total(key) / max(denom, 1)
            if key in cls.BASE2_KEYS:
                value /= math.log(2)
            metrics.log_scalar(key, value, denom, round=3)
        metrics.log_derived("ppl", lambda m: utils.get_perplexity(m["nll_loss"].avg))
        if any("nonfinite_skipped" in log for log in logging_outputs):
            metrics.log_scalar_sum("nonfinite_skipped", total("nonfinite_skipped"))
        for key in ("nsentences", "ntokens", "fire_correct", "ctc_infeasible", "tf_errors", "tf_total"):
            if any(key in log for log in logging_outputs):
                metrics.log_scalar_sum(f"_{key}", total(key))
        if any("fire_correct" in log for log in logging_outputs):
            metrics.log_derived("fire_acc", lambda m: _ratio(m, "_fire_correct", "_nsentences", 100))
        if any("segments_outside" in log for log in logging_outputs):
            metrics.log_scalar_sum("segments_outside", total("segments_outside"))
        if any("tf_total" in log for log in logging_outputs):
            metrics.log_derived("tf_ter", lambda m: _ratio(m, "_tf_errors", "_tf_total", 100))
        if any("ctc_infeasible" in log for log in logging_outputs):
            metrics.log_derived("ctc_infeasible", lambda m: float(m["_ctc_infeasible"].sum))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _ratio(meters, num: str, den: str, scale: float) -> float:
    d = float(meters[den].sum)  # sums are tensors after a distributed all-reduce
    return round(scale * float(meters[num].sum) / d, 3) if d > 0 else float("nan")
