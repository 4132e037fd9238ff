"""Decoding for CIF models: batched beam search, greedy search and NAR argmax.

``CifAsrTask.build_generator`` returns :func:`build_cif_generator`, so the stock command works::

    fairseq-generate DATA --user-dir fairseq_hkd --task cif_asr --path ckpt.pt \\
        --gen-subset test --beam 10 --scoring wer [--wer-char-level]

Shape legend: B utterances, K beam size, N CIF tokens (max over the batch), C CIF channels,
V vocabulary, T' encoder frames.

How a CIF hypothesis is scored (the length is fixed by CIF, not predicted)
-------------------------------------------------------------------------
CIF fires ``L_b`` times for utterance b (fires + the inference tail rule: a leftover weight
>= the model's ``cif_tail_threshold``, 0.5, emits one more token; change it without retraining
with ``--model-overrides "{'cif_tail_threshold': 0.4}"``).
The decoder runs exactly ``L_b`` steps; step i is conditioned on ``c_i`` and on the tokens chosen
at steps < i. At every step the whole vocabulary competes except ``<s>`` (the CTC blank) and
``<pad>``. In training the fire count equals the target length, so the last step is the one that
predicts ``</s>``. At inference:

* ``</s>`` competes only at the last step ``L_b - 1`` (and, with ``eos_slack`` = 1, also at step
  ``L_b - 2``, to absorb a spurious tail fire); before that it is forbidden, so every hypothesis
  runs all its steps and holds at least ``L_b - 1 - eos_slack`` tokens before ``</s>``. (Letting
  ``</s>`` end a hypothesis anywhere froze an early, short hypothesis with a score that no longer
  paid for the remaining steps, and it beat every open one: empty transcripts at beam 10.)
* a hypothesis still open after step ``L_b - 1`` gets ``</s>`` appended at no cost (CIF fired
  too few times: the last real token is kept instead of being overwritten by a forced ``</s>``).

``eos_slack`` comes from the task option ``--cif-eos-slack`` (default 0).

A model trained with sentence joins (``--join-prob``, data/sentence_joins.py) has seen ``</s>`` inside
a target, between two sentences of one segment. With ``inner_eos`` (task option ``--cif-inner-eos``,
auto = on for such a model) ``</s>`` competes at every step like any token and ends a hypothesis
only at its last step: an inner ``</s>`` is a sentence boundary, stripped from the text with the
final one (``eos_slack`` does not apply). CTC scores of the count search drop inner ``</s>``, as
CTC training does; streaming (stream_search.py) follows the same rule.

How the count is chosen (``count_search``, task option ``--cif-count-search``, default 1)
----------------------------------------------------------------------------------------
Training always scales the weights to sum to the target length S_b, so each token integrates
exactly one unit of weight; raw inference weights do not (a tail token may integrate 0.6, and
up to 0.5 of weight is dropped). With ``count_search`` = R >= 0 the predicted count ``L_b``
(fires + tail rule) only proposes counts: for every n in ``L_b - R .. L_b + R`` (at least 1) the
weights are scaled to sum to n, as in training, and searched; the candidate with the best
``ctc_weight * log p_CTC(y | x) + (1 - ctc_weight) * score`` wins, where ``y`` is its best
hypothesis without ``</s>`` and ``log p_CTC`` the CTC head's sequence log-likelihood (all
alignments, blank = ``<s>``; the decoder's summed log-prob favours short hypotheses, CTC's does
not). R = 0: the weights scaled to ``L_b``, no search; R = -1: the raw weights (the decoding before
2026-12-03). ``ctc_weight`` (task option ``--cif-ctc-weight``, default 0.7; 0 for a model trained
without the CTC loss: ``CifAsrTask.decoding_ctc_weight``) was chosen on heldout (examples/synth/RESULTS.md, "Decoding that chooses the CIF count";
``scripts/cif_count_choice.py``).

Language-model shallow fusion (``--lm-path LM.pt --lm-weight W``): every chosen token also scores
``W * log p_LM(token | prefix)``, ``</s>`` included, and an appended ``</s>`` pays
``W * log p_LM(</s> | hypothesis)``; the rule, the loading and the dictionary check are in
``lm_fusion.py``. W = 0 runs the plain search.

``score`` is the sum of the natural-log probabilities of the tokens the decoder chose (no length
normalisation: the hypotheses of one utterance differ in length by at most ``eos_slack`` steps);
``positional_scores`` has one entry per returned token (0 for an appended ``</s>``). With an LM
both hold the fused values (below).
Beam search (beam 1 = greedy) keeps finished hypotheses inside the beam, so the search is a pure
tensor program over the flattened ``[B * K]`` rows plus one Python loop over steps; utterances
whose beams have all finished leave the batch (their incremental state is dropped).

fairseq's length options (``--lenpen``, ``--max-len-a/b``, ``--min-len``, ``--unkpen``) do not
apply: CIF fixes the number of steps. ``--print-alignment hard`` prints, per emitted token, the
encoder frame whose weight completed it (``A-`` lines of ``frame-token`` pairs).

The non-autoregressive decoder (``decoder.autoregressive == False``) is decoded with one argmax
pass over all ``L_b`` positions under the same ``</s>`` rules (one hypothesis per utterance
whatever ``--beam`` says).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq_hkd.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["CifGenerator", "CifSearchResult", "build_cif_generator"]

class CifSearchResult(NamedTuple):
    """Raw search output, K' = nbest hypotheses per utterance sorted best first.

    tokens            [B, K', N + 1] long   hypothesis tokens, each ends with </s>, pad after
    lengths           [B, K'] long          tokens per hypothesis (incl. </s>); 0 for an empty slot
    scores            [B, K'] float         summed log-probs (-inf for an empty slot)
    positional_scores [B, K', N + 1] float  per-token log-probs, 0 at padding / appended </s>
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    positional_scores: Tensor


@dataclass
class CifDecodeOutput:
    """Everything one decoding pass produced (used by transcription and plots).

    hypos            per utterance, a list of hypothesis dicts (fairseq's format + "fires")
    alpha            [B, T'] raw CIF weights (masked)
    fire_mask        [B, T'] bool, frame t completed a token
    encoder_lengths  [B] long, valid encoder frames
    cif_lengths      [B] long, CIF tokens (fires + tail)
    """

    hypos: List[List[Dict]]
    alpha: Tensor
    fire_mask: Tensor
    encoder_lengths: Tensor
    cif_lengths: Tensor


def build_cif_generator(models, args, tgt_dict, tail_threshold: Optional[float] = None,
                        eos_slack: int = 0, lm_model=None, dict_path: Optional[str] = None,
                        count_search: int = -1, ctc_weight: float = 0.0, inner_eos: bool = False) -> "CifGenerator":
    """The task's ``build_generator`` hook: read fairseq's generation options from ``args``.

    ``args`` is fairseq's GenerationConfig (or an argparse Namespace); uses ``beam``, ``nbest``,
    ``print_alignment``, ``lm_path`` and ``lm_weight``. ``tail_threshold``: None = the model's
    ``cif_tail_threshold`` (fairseq-generate changes it with ``--model-overrides``); ``eos_slack``
    comes from the task option ``--cif-eos-slack``, ``count_search`` and ``ctc_weight`` from
    ``--cif-count-search`` and ``--cif-ctc-weight``, ``inner_eos`` from ``--cif-inner-eos``. ``lm_model``: the LM fairseq-generate loaded for ``--lm-path`` (its
    ``extra_gen_cls_kwargs["lm_model"]``); None with ``lm_path`` set: loaded here
    (``lm_fusion.load_lm``). ``dict_path``: the ASR dict.txt (named in dictionary errors).
    """
    beam = int(getattr(args, "beam", 1) or 1)
    nbest = int(getattr(args, "nbest", 1) or 1)
    print_alignment = getattr(args, "print_alignment", None)
    if print_alignment not in (None, "hard"):
        raise NotImplementedError(f"--print-alignment {print_alignment}: CIF decoding gives hard alignments only")
    lm_path = getattr(args, "lm_path", None)
    lm_weight = float(getattr(args, "lm_weight", 0.0) or 0.0)
    if lm_path and lm_model is None:
        from fairseq_hkd.generation.lm_fusion import load_lm

        if dict_path is None:
            raise ValueError("build_cif_generator: --lm-path needs dict_path (the ASR dict.txt)")
        device = next(models[0].parameters()).device
        lm_model = load_lm(lm_path, dict_path, tgt_dict, device=device)
    if lm_model is not None:
        from fairseq_hkd.generation.lm_fusion import check_lm_model

        check_lm_model(lm_model, tgt_dict, lm_path, dict_path)
        if lm_weight == 0.0:
            logger.warning("--lm-path %s with --lm-weight 0: the language model is not used", lm_path)
        else:
            logger.info("shallow fusion with %s, weight %g", lm_path or "a language model", lm_weight)
    elif lm_weight != 0.0:
        logger.warning("--lm-weight %g without --lm-path: no language model is used", lm_weight)
    return CifGenerator(models, tgt_dict, beam_size=beam, nbest=nbest, hard_alignment=print_alignment == "hard",
                        tail_threshold=tail_threshold, eos_slack=eos_slack, lm_model=lm_model, lm_weight=lm_weight,
                        count_search=count_search, ctc_weight=ctc_weight, inner_eos=inner_eos)


class CifGenerator:
    """Batched CIF decoding; ``generate(models, sample)`` follows fairseq's generator interface."""

    def __init__(
        self,
        models,
        tgt_dict,
        beam_size: int = 10,
        nbest: int = 1,
        tail_threshold: Optional[float] = None,
        hard_alignment: bool = False,
        eos_slack: int = 0,
        lm_model=None,
        lm_weight: float = 0.0,
        count_search: int = -1,
        ctc_weight: float = 0.0,
        inner_eos: bool = False,
    ):
        """models: a one-model list; tail_threshold: None = the model's configured value;
        hard_alignment: fill ``alignment`` with (encoder frame, token index) pairs; eos_slack:
        ``</s>`` may end a hypothesis at the last step or up to this many steps before it (0 or 1);
        lm_model, lm_weight: shallow fusion with a fairseq LM over the same dictionary (lm_fusion.py;
        weight 0 or no model: none); count_search, ctc_weight: how the CIF count is chosen (module
        docstring; -1: the raw weights' count, the API's default); inner_eos: ``</s>`` also competes
        at inner steps as a sentence boundary and does not end the hypothesis (a model trained with
        sentence joins; module docstring)."""
        if len(models) != 1:
            raise NotImplementedError(
                f"CIF decoding takes one model, got an ensemble of {len(models)}: CIF fire counts "
                "differ between models. Average the checkpoints instead "
                "(fairseq-hkd-average-checkpoints) and pass one --path."
            )
        if beam_size < 1 or nbest < 1:
            raise UserError(f"--beam ({beam_size}) and --nbest ({nbest}) must be >= 1")
        if eos_slack not in (0, 1):
            raise UserError(f"--cif-eos-slack must be 0 or 1, got {eos_slack}")
        if nbest > beam_size:
            raise UserError(f"--nbest {nbest} cannot exceed --beam {beam_size}")
        if count_search < -1:
            raise UserError(f"--cif-count-search must be >= -1, got {count_search}")
        if not 0.0 <= ctc_weight <= 1.0:
            raise UserError(f"--cif-ctc-weight must be in [0, 1], got {ctc_weight}")
        self.count_search = int(count_search)
        self.ctc_weight = float(ctc_weight)
        self.model = models[0]
        self.tgt_dict = tgt_dict
        self.beam_size = beam_size
        self.nbest = nbest
        self.tail_threshold = tail_threshold
        self.hard_alignment = hard_alignment
        self.eos_slack = eos_slack
        self.inner_eos = bool(inner_eos)
        self.eos = tgt_dict.eos()
        self.pad = tgt_dict.pad()
        self.bos = tgt_dict.bos()
        self.vocab_size = len(tgt_dict)
        # fairseq-generate strips these from the H-/T- strings.
        self.symbols_to_strip_from_output = {self.eos, self.bos}
        self.autoregressive = bool(getattr(self.model.decoder, "autoregressive", True))
        if not self.autoregressive and beam_size > 1:
            logger.info("non-autoregressive decoder: argmax decoding, --beam %d ignored", beam_size)
        self.lm = None
        if lm_model is not None:
            from fairseq_hkd.generation.lm_fusion import LmScorer

            lm = LmScorer(lm_model, lm_weight, self.eos, self.pad, self.vocab_size)  # checks the weight
            if lm_weight == 0.0:
                pass
            elif not self.autoregressive:
                logger.warning("non-autoregressive decoder: argmax decoding, the language model is not used")
            else:
                self.lm = lm

    # ------------------------------------------------------------------ fairseq interface
    @torch.no_grad()
    def generate(self, models, sample, prefix_tokens=None, constraints=None, **kwargs):
        """fairseq's hook: ``sample["net_input"]`` -> per utterance a list of hypothesis dicts.

        Each hypothesis: ``tokens`` (long, ends with </s>), ``score`` (float, natural log),
        ``positional_scores`` (float, one per token), ``alignment`` (None, or with
        ``hard_alignment`` a long [M, 2] of (encoder frame, token index) for the M tokens before
        </s> that have a fire) and ``fires``
        (long [L_b]: encoder frame that completed each CIF token; the tail token gets the last
        valid frame).
        """
        if prefix_tokens is not None:
            raise NotImplementedError("--prefix-size is not supported by CIF decoding")
        if constraints is not None:
            raise NotImplementedError("--constraints is not supported by CIF decoding")
        net_input = sample["net_input"]
        return self.decode(net_input["src_tokens"], net_input["src_lengths"]).hypos

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, src_tokens: Tensor, src_lengths: Tensor) -> CifDecodeOutput:
        """Encoder, CIF, search.  src_tokens [B, T, F] features, src_lengths [B] frames."""
        model = self.model
        model.eval()
        encoder_out = model.forward_encoder(src_tokens, src_lengths)
        alpha, cif_out = model.forward_cif(encoder_out, tail_threshold=self.tail_threshold)
        if self.count_search < 0:
            lengths, fire_mask = cif_out.lengths, cif_out.fire_mask
            result = self.search(cif_out.embeddings, lengths)
        else:
            result, fire_mask, lengths = self.count_search_decode(encoder_out, cif_out.lengths, alpha)
        enc_lengths = encoder_out["encoder_lengths"]
        fires = fire_frames(fire_mask, lengths, enc_lengths)
        hypos = self.to_hypos(result, fires)
        return CifDecodeOutput(hypos, alpha, fire_mask, enc_lengths, lengths)

    def search(self, embeddings: Tensor, lengths: Tensor) -> CifSearchResult:
        """Beam search (autoregressive decoder) or argmax (NAR) over CIF outputs [B, N, C], lengths [B]."""
        return self.beam_search(embeddings, lengths) if self.autoregressive else self.nar_argmax(embeddings, lengths)

    def count_search_decode(self, encoder_out: Dict[str, Tensor], predicted: Tensor, alpha: Tensor):
        """Search every candidate count ``predicted + d``, ``|d| <= count_search`` (module docstring).

        encoder_out: the model's encoder dict (B utterances); predicted [B] long, the CIF count of the
        raw weights (0 stays 0: nothing to transcribe; no candidate exceeds the frames of positive
        weight, each of which holds at most one unit); alpha [B, T'] the raw weights.
        -> (CifSearchResult of the chosen candidates, fire_mask [B, T'] and lengths [B] of their
        scaled weights).
        """
        R, bsz = self.count_search, predicted.numel()
        m = 2 * R + 1
        result, cif = self.search_candidates(encoder_out, predicted, alpha)
        if m == 1:
            return result, cif.fire_mask, cif.lengths
        joint = result.scores[:, 0].float()  # [M * B] the best hypothesis of each candidate
        if self.ctc_weight > 0:
            ctc = self.ctc_scores(encoder_out, result.tokens[:, 0], result.lengths[:, 0], m)
            joint = self.ctc_weight * ctc + (1.0 - self.ctc_weight) * joint
        joint = joint.view(m, bsz)
        # Candidates with no finite score (CTC cannot emit them) lose; if none is finite, keep L_b.
        joint = torch.where(torch.isfinite(joint), joint, torch.full_like(joint, float("-inf")))
        best = joint.argmax(dim=0)
        best = torch.where(torch.isfinite(joint).any(dim=0), best, torch.full_like(best, R))
        rows = best * bsz + torch.arange(bsz, device=best.device)  # [B]
        chosen = CifSearchResult(result.tokens[rows], result.lengths[rows], result.scores[rows],
                                 result.positional_scores[rows])
        return chosen, cif.fire_mask[rows], cif.lengths[rows]

    def search_candidates(self, encoder_out: Dict[str, Tensor], predicted: Tensor, alpha: Tensor):
        """The candidate counts ``predicted + d``, ``|d| <= count_search`` (at least 1, at most the
        frames of positive weight ``alpha``; 0 stays 0), each searched with the weights scaled to it, as one batch.

        -> (CifSearchResult and CifOutput with M * B rows, row d_index * B + b).
        """
        deltas = torch.arange(-self.count_search, self.count_search + 1, device=predicted.device)  # [M]
        frames = (alpha > 0).sum(dim=1).to(predicted)  # a frame holds at most one unit of weight (0 at padding)
        counts = torch.minimum((predicted[None, :] + deltas[:, None]).clamp(min=1), frames[None, :])  # [M, B]
        counts = torch.where(predicted[None, :] > 0, counts, torch.zeros_like(counts)).reshape(-1)  # [M * B]
        repeated = {k: torch.cat([v] * deltas.numel(), dim=0) for k, v in encoder_out.items() if torch.is_tensor(v)}
        _, cif = self.model.forward_cif(repeated, target_lengths=counts)
        return self.search(cif.embeddings, cif.lengths), cif

    def ctc_scores(self, encoder_out: Dict[str, Tensor], tokens: Tensor, lengths: Tensor, m: int) -> Tensor:
        """CTC sequence log-likelihood of each hypothesis (its tokens before the final ``</s>``, inner
        ``</s>`` dropped: CTC was trained without them).

        encoder_out: B utterances; tokens [M * B, W] and lengths [M * B] (incl. ``</s>``; 0 = none)
        for the M candidates of every utterance (row c * B + b). -> [M * B] float32, -inf where the
        hypothesis cannot be emitted in the utterance's frames.
        """
        lprobs = F.log_softmax(self.model.forward_ctc(encoder_out).float(), dim=-1)  # [B, T', V]
        frames = encoder_out["encoder_lengths"]
        width = max(int(lengths.max().item()), 1) if lengths.numel() else 1
        tokens = tokens[:, :width]
        keep = (torch.arange(width, device=tokens.device)[None, :] < (lengths - 1)[:, None]) & (tokens != self.eos)
        n = keep.sum(dim=1)  # tokens before the final </s>, inner </s> out
        order = torch.argsort((~keep).int(), dim=1, stable=True)  # the kept tokens first, in order
        targets = tokens.gather(1, order)
        targets[torch.arange(width, device=tokens.device)[None, :] >= n[:, None]] = self.pad
        loss = F.ctc_loss(torch.cat([lprobs] * m, dim=0).transpose(0, 1), targets, frames.repeat(m), n,
                          blank=self.bos, reduction="none", zero_infinity=False)
        return torch.where(torch.isfinite(loss), -loss, torch.full_like(loss, float("-inf")))

    def _lprobs(self, logits: Tensor) -> Tensor:
        """logits [R, V] -> log-probs in float32 with <s> and <pad> forbidden."""
        lprobs = F.log_softmax(logits.float(), dim=-1)
        lprobs[:, self.bos] = float("-inf")
        lprobs[:, self.pad] = float("-inf")
        return lprobs

    @torch.no_grad()
    def beam_search(self, embeddings: Tensor, lengths: Tensor) -> CifSearchResult:
        """Batched beam search; beam 1 is greedy search.

        embeddings [B, N, C] CIF outputs, zero beyond lengths; lengths [B] long.
        """
        bsz, max_len, _ = embeddings.shape
        K, V, device = self.beam_size, self.vocab_size, embeddings.device
        decoder = self.model.decoder
        n_steps = int(lengths.max().item()) if bsz > 0 else 0
        width = n_steps + 2  # </s> start symbol + n_steps tokens + appended </s>

        # Final buffers, indexed by global row b * K + k.
        out_tokens = torch.full((bsz * K, width), self.pad, dtype=torch.long, device=device)
        out_pos = torch.zeros(bsz * K, width - 1, device=device)
        out_scores = torch.zeros(bsz * K, device=device)

        # Active state: rows of the utterances still searching, flattened [B_a * K].
        utt = torch.arange(bsz, device=device)  # active utterance ids
        row_len = lengths.repeat_interleave(K)  # [B_a * K]
        emb = embeddings.repeat_interleave(K, dim=0)  # [B_a * K, N, C]
        pad_mask = torch.arange(max_len, device=device)[None, :] >= row_len[:, None]
        tokens = out_tokens.clone()
        tokens[:, 0] = self.eos
        pos = out_pos.clone()
        # Only beam 0 is live at the start, so the first step does not duplicate hypotheses.
        scores = torch.full((bsz, K), float("-inf"), device=device)
        scores[:, 0] = 0.0
        scores = scores.view(-1)
        finished = row_len == 0
        tokens[finished, 1] = self.eos  # no fires: the hypothesis is just </s>
        incremental_state: Dict[str, Dict[str, Optional[Tensor]]] = {}
        lm = self.lm
        if lm is not None:
            # The LM runs one step ahead of the decoder: lm_lprobs [rows, V] always holds the LM's
            # next-token log-probs after each row's tokens so far, so an appended </s> can be scored
            # as soon as it is appended.
            lm.reset()
            lm_lprobs = lm.step(tokens[:, :1])
            lm_eos = torch.where(finished, lm.weight * lm_lprobs[:, self.eos], 0.0)  # no fires: W log p_LM(</s>)
            scores, pos[:, 0] = scores + lm_eos, lm_eos
        # Candidate row of a finished hypothesis: only <pad> (stay as is), at no cost.
        stay = torch.full((V,), float("-inf"), device=device)
        stay[self.pad] = 0.0

        for step in range(n_steps):
            # 1. Drop utterances whose beams have all finished.
            done = finished.view(-1, K).all(dim=1)
            if done.any():
                self._write_back(done, utt, K, tokens, pos, scores, out_tokens, out_pos, out_scores)
                keep_utt = (~done).nonzero().squeeze(1)
                if keep_utt.numel() == 0:
                    utt = utt[:0]
                    break
                keep = (keep_utt[:, None] * K + torch.arange(K, device=device)).view(-1)
                utt, row_len, emb, pad_mask = utt[keep_utt], row_len[keep], emb[keep], pad_mask[keep]
                tokens, pos, scores, finished = tokens[keep], pos[keep], scores[keep], finished[keep]
                self._reorder(decoder, incremental_state, keep)
                if lm is not None:
                    lm_lprobs = lm_lprobs[keep]
                    lm.reorder(keep)
            n_active = utt.numel()

            # 2. One decoder step for every active row (conditioned on c_0 .. c_step).
            logits, _ = decoder(
                tokens[:, : step + 1],
                emb[:, : step + 1],
                pad_mask[:, : step + 1],
                incremental_state=incremental_state,
            )
            lprobs = self._lprobs(logits[:, -1, :])
            if lm is not None:
                lprobs = lprobs + lm.weight * lm_lprobs  # shallow fusion (<s>, <pad> stay -inf)
            if not self.inner_eos:
                early = row_len - 1 - self.eos_slack > step  # </s> not allowed yet
                lprobs[:, self.eos] = torch.where(early, float("-inf"), lprobs[:, self.eos])
            lprobs = torch.where(finished[:, None], stay[None, :], lprobs)

            # 3. Best K continuations of each utterance among its K * V candidates.
            cand = (scores[:, None] + lprobs).view(n_active, K * V)
            top_scores, top_idx = cand.topk(K, dim=1)
            src_beam = torch.div(top_idx, V, rounding_mode="floor")
            new_tok = (top_idx % V).view(-1)
            order = (torch.arange(n_active, device=device)[:, None] * K + src_beam).view(-1)
            top_scores = top_scores.view(-1)

            # 4. Reorder the state to the chosen parents (greedy: always the identity) and append
            #    the chosen tokens.
            if K > 1:
                tokens, pos, finished = tokens[order], pos[order], finished[order]
                self._reorder(decoder, incremental_state, order)
                scores = scores[order]
                if lm is not None:
                    lm_lprobs = lm_lprobs[order]
                    lm.reorder(order)
            pos[:, step] = torch.where(finished, pos.new_zeros(()), top_scores - scores)
            tokens[:, step + 1] = new_tok
            scores = top_scores

            # 5. Finish on </s>, or after the last CIF step (</s> appended at no cost).
            last = row_len == step + 1
            ends = last if self.inner_eos else (new_tok == self.eos) | last  # inner </s>: a sentence boundary
            newly = ~finished & ends
            append = newly & (new_tok != self.eos)
            tokens[:, step + 2] = torch.where(append, self.eos, tokens[:, step + 2])
            finished = finished | newly

            # 6. LM: next-token log-probs after the new tokens (needed by the next step, and now by
            #    the rows that just got </s> appended: they pay W log p_LM(</s> | hypothesis)).
            if lm is not None and (step + 1 < n_steps or bool(append.any())):
                lm_lprobs = lm.step(tokens[:, : step + 2])
                lm_eos = torch.where(append, lm.weight * lm_lprobs[:, self.eos], 0.0)
                scores = scores + lm_eos
                pos[:, step + 1] = torch.where(append, lm_eos, pos[:, step + 1])

        if utt.numel() > 0:
            done = torch.ones(utt.numel(), dtype=torch.bool, device=device)
            self._write_back(done, utt, K, tokens, pos, scores, out_tokens, out_pos, out_scores)
        return self._select_nbest(out_tokens, out_pos, out_scores, bsz, K)

    @staticmethod
    def _write_back(done, utt, K, tokens, pos, scores, out_tokens, out_pos, out_scores):
        """Copy the rows of the finished utterances ``done`` [B_a] into the final buffers."""
        local = (done.nonzero().squeeze(1)[:, None] * K + torch.arange(K, device=done.device)).view(-1)
        glob = (utt[done][:, None] * K + torch.arange(K, device=done.device)).view(-1)
        out_tokens[glob] = tokens[local]
        out_pos[glob] = pos[local]
        out_scores[glob] = scores[local]

    @staticmethod
    def _reorder(decoder, incremental_state, order: Tensor) -> None:
        if not incremental_state:
            return
        if hasattr(decoder, "reorder_incremental_state_scripting"):
            decoder.reorder_incremental_state_scripting(incremental_state, order)
        else:
            decoder.reorder_incremental_state(incremental_state, order)

    def _select_nbest(self, tokens, pos, scores, bsz, K) -> CifSearchResult:
        """[B * K] rows -> the nbest per utterance, best first, with token counts."""
        width = tokens.size(1)
        scores = scores.view(bsz, K)
        best, idx = scores.topk(self.nbest, dim=1)
        rows = (torch.arange(bsz, device=scores.device)[:, None] * K + idx).view(-1)
        tok = tokens[rows, 1:].view(bsz, self.nbest, width - 1)
        pos = pos[rows].view(bsz, self.nbest, width - 1)
        # Length = up to and including the last </s> (the first, unless inner </s> are allowed: a finished
        # hypothesis holds only <pad> after its final </s>).
        is_eos = tok == self.eos
        last_eos = width - 2 - is_eos.flip(-1).int().argmax(-1)
        n = torch.where(is_eos.any(-1), last_eos + 1, torch.zeros_like(best, dtype=torch.long))
        n = torch.where(torch.isfinite(best), n, torch.zeros_like(n))
        return CifSearchResult(tok, n, best, pos)

    @torch.no_grad()
    def nar_argmax(self, embeddings: Tensor, lengths: Tensor) -> CifSearchResult:
        """Non-autoregressive decoding: argmax at every CIF position, one hypothesis each."""
        bsz, max_len, _ = embeddings.shape
        device = embeddings.device
        pad_mask = torch.arange(max_len, device=device)[None, :] >= lengths[:, None]
        prev = torch.full((bsz, max_len), self.eos, dtype=torch.long, device=device)
        logits, _ = self.model.decoder(prev, embeddings, pad_mask, incremental_state=None)
        lprobs = F.log_softmax(logits.float(), dim=-1)
        lprobs[..., self.bos] = float("-inf")
        lprobs[..., self.pad] = float("-inf")
        if not self.inner_eos:
            early = torch.arange(max_len, device=device)[None, :] < (lengths - 1 - self.eos_slack)[:, None]
            lprobs[..., self.eos] = lprobs[..., self.eos].masked_fill(early, float("-inf"))
        best, tok = lprobs.max(dim=-1)  # [B, N]
        tok = tok.masked_fill(pad_mask, self.pad)
        # Cut after the first </s> (inner </s> allowed: after the last step); append </s> where none ends it.
        is_eos = (tok == self.eos) & (~pad_mask if not self.inner_eos else
                                      torch.arange(max_len, device=device)[None, :] == (lengths - 1)[:, None])
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), lengths)
        keep = torch.arange(max_len, device=device)[None, :] <= first_eos[:, None]
        keep &= ~pad_mask
        tok = torch.cat([tok.masked_fill(~keep, self.pad), tok.new_full((bsz, 1), self.pad)], 1)
        pos = torch.cat([best.masked_fill(~keep, 0.0), best.new_zeros(bsz, 1)], 1)
        n = torch.where(is_eos.any(1), first_eos + 1, lengths + 1)
        tok[torch.arange(bsz, device=device), n - 1] = self.eos
        return CifSearchResult(tok[:, None], n[:, None], pos.sum(1)[:, None], pos[:, None])

    # ------------------------------------------------------------------ output
    def to_hypos(self, result: CifSearchResult, fires: List[Tensor]) -> List[List[Dict]]:
        """CifSearchResult -> fairseq's list (per utterance) of lists of hypothesis dicts."""
        tokens, lengths = result.tokens.cpu(), result.lengths.cpu().tolist()
        scores, pos = result.scores.cpu().tolist(), result.positional_scores.cpu()
        hypos = []
        for b in range(tokens.size(0)):
            utt = []
            for k in range(tokens.size(1)):
                n = lengths[b][k]
                if n == 0:  # an empty slot (fewer distinct hypotheses than --nbest)
                    continue
                alignment = None
                if self.hard_alignment:
                    m = min(n - 1, fires[b].numel())
                    alignment = torch.stack([fires[b][:m], torch.arange(m)], dim=1)
                utt.append(
                    {
                        "tokens": tokens[b, k, :n].clone(),
                        "score": scores[b][k],
                        "positional_scores": pos[b, k, :n].clone(),
                        "alignment": alignment,
                        "fires": fires[b],
                    }
                )
            hypos.append(utt)
        return hypos


def fire_frames(fire_mask: Tensor, cif_lengths: Tensor, encoder_lengths: Tensor) -> List[Tensor]:
    """Frame index that completed each CIF token, per utterance (CPU long tensors [L_b]).

    fire_mask [B, T'] bool; cif_lengths [B] (fires + tail); encoder_lengths [B]. A tail token
    (one more token than fires) is placed at the last valid encoder frame.
    """
    fire_mask, cif_lengths, encoder_lengths = fire_mask.cpu(), cif_lengths.cpu(), encoder_lengths.cpu()
    out = []
    for b in range(fire_mask.size(0)):
        f = fire_mask[b, : int(encoder_lengths[b])].nonzero().squeeze(1)
        n = int(cif_lengths[b])
        if n > f.numel():
            f = torch.cat([f, f.new_full((n - f.numel(),), max(int(encoder_lengths[b]) - 1, 0))])
        out.append(f[:n])
    return out
