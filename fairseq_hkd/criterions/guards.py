"""Guards on loss values: a NaN or inf loss stops training with an error that says which term, which
utterances and what to try, instead of a model silently filled with NaN.

fairseq's Trainer only notices non-finite *gradients* after the backward pass ("gradients are
Nan/Inf", or a skipped fp16 overflow), by which time the offending term and batch are unknown.
The criterion calls :func:`check_finite` on its named terms right after the forward pass; the check
costs one host sync per batch, which the criterion's logging (``utils.item``) already pays.

Usage (in a criterion's ``forward``)::

    guards.check_inputs(sample)            # NaN/inf features or teacher states: name the utterances
    terms, net_output, stats = self.compute_terms(model, sample)
    guards.check_finite(terms, sample)     # NaN/inf loss terms: name the terms and the batch

``check_inputs`` runs before the model, because non-finite features make non-finite CIF weights,
which the CIF middleware rejects (with no utterance ids) before any loss exists.

With ``--nonfinite-loss skip`` (e.g. fp16 runs that overflow now and then) the criterion calls
:func:`nonfinite_message` instead of :func:`check_finite`, logs it and returns :func:`zero_loss`.
"""
from typing import Dict, List, Mapping, Optional

import torch

__all__ = ["NonFiniteLossError", "check_finite", "check_inputs", "nonfinite_inputs", "nonfinite_message", "zero_loss"]

MAX_IDS = 10  # utterance ids listed in a message


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN or inf; the message names the term(s), the batch and likely causes."""


def _ids(sample: Mapping, rows: Optional[List[int]] = None) -> str:
    ids = list(sample.get("utt_id") or [str(int(i)) for i in sample.get("id", [])])
    if rows is not None:
        ids = [ids[r] for r in rows]
    more = f" (+{len(ids) - MAX_IDS} more)" if len(ids) > MAX_IDS else ""
    return ", ".join(ids[:MAX_IDS]) + more


def nonfinite_inputs(sample: Mapping) -> Dict[str, List[int]]:
    """Rows of the batch whose input features / teacher states contain NaN or inf:
    ``{"features": [b, ...], "teacher_states": [b, ...]}`` (only non-empty entries)."""
    found = {}
    src = sample.get("net_input", {}).get("src_tokens")
    if src is not None and src.is_floating_point():
        bad = ~torch.isfinite(src).flatten(1).all(dim=1)               # [B]
        if bad.any():
            found["features"] = bad.nonzero().flatten().tolist()
    teacher = sample.get("teacher_states")
    if teacher is not None:
        bad = ~torch.isfinite(teacher).flatten(1).all(dim=1)
        if bad.any():
            found["teacher_states"] = bad.nonzero().flatten().tolist()
    return found


def _input_messages(sample: Mapping, inputs: Dict[str, List[int]]) -> List[str]:
    msg = []
    if "features" in inputs:
        msg.append(f"The input features contain NaN/inf for {_ids(sample, inputs['features'])}: check the audio "
                   "files and the CMVN statistics (cmvn.npz, fairseq-hkd-cmvn) or rebuild the feature store.")
    if "teacher_states" in inputs:
        msg.append(f"The teacher states contain NaN/inf for {_ids(sample, inputs['teacher_states'])}: re-run "
                   "fairseq-hkd-extract-teacher (with --dtype float32 if float16 overflowed).")
    return msg


def check_inputs(sample: Mapping) -> None:
    """Raise :class:`NonFiniteLossError` naming the utterances whose features or teacher states
    contain NaN/inf (one reduction over the batch and one host sync)."""
    inputs = nonfinite_inputs(sample)
    if inputs:
        raise NonFiniteLossError(" ".join([f"non-finite inputs in a batch of utterance(s) {_ids(sample)}."]
                                          + _input_messages(sample, inputs)))


def check_finite(terms: Mapping[str, torch.Tensor], sample: Mapping) -> None:
    """Raise :class:`NonFiniteLossError` if any term (a scalar tensor) is NaN or inf.

    The message names every non-finite term with its value, the batch's utterance ids (the terms
    are batch sums, so the batch is the finest unit known), the utterances whose inputs are already
    non-finite when there are any, and the usual fixes.
    """
    msg = nonfinite_message(terms, sample)
    if msg is not None:
        raise NonFiniteLossError(msg)


def nonfinite_message(terms: Mapping[str, torch.Tensor], sample: Mapping) -> Optional[str]:
    """None when every term (a scalar tensor) is finite, else the message :func:`check_finite` raises
    (one host sync)."""
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return None
    bad = ", ".join(f"{name}={float(v):g}" for name, v, ok in zip(terms, values, finite) if not ok)
    msg = [f"non-finite loss term(s) {bad} in a batch of {len(sample.get('utt_id') or sample.get('id', []))} "
           f"utterance(s): {_ids(sample)}."]
    inputs = nonfinite_inputs(sample)
    msg += _input_messages(sample, inputs)
    if not inputs:
        msg.append("The inputs are finite, so training diverged: lower --lr or lengthen the warm-up, keep "
                   "--clip-norm (paper: 1.0), train in float32 (without --fp16/--amp) to confirm, and check these "
                   "utterances' transcripts against their audio (a transcript far longer than its audio makes "
                   "CTC and the quantity loss explode).")
    return " ".join(msg)


def zero_loss(*modules: torch.nn.Module) -> torch.Tensor:
    """A float32 zero connected to one element of every trainable parameter of ``modules``: its
    backward gives every parameter an exact zero gradient (none NaN, none missing), so a skipped
    batch still takes part in DDP's gradient all-reduce and fp16 loss scaling like any other."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return sum((p.reshape(-1)[:1].float().sum() * 0.0 for p in params), torch.zeros(()))
