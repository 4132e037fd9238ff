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

With ``--nonfinite-loss skip`` the criterion calls :func:`nonfinite_message` instead of
:func:`check_finite`, logs it and returns :func:`zero_loss`.

fp16 overflow: when the forward pass computed in float16 (:func:`float16_forward`) and the inputs
are finite, non-finite terms are an overflow, not divergence: the criterion returns
:func:`overflow_loss`, whose gradients are inf, and fairseq's loss scaler does what it does for its
own models (OverflowError at the gradient norm: update skipped, loss scale lowered).
"""
from typing import Dict, List, Mapping, Optional

import torch

__all__ = ["NonFiniteLossError", "check_finite", "check_inputs", "float16_forward", "nonfinite_inputs",
           "nonfinite_message", "overflow_loss", "overflow_message", "zero_loss"]

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
    bad = _nonfinite_terms(terms)
    if bad is None:
        return None
    msg = [f"non-finite loss term(s) {bad} in a batch of {_batch_size(sample)} utterance(s): {_ids(sample)}."]
    inputs = nonfinite_inputs(sample)
    msg += _input_messages(sample, inputs)
    if not inputs:
        msg.append("The inputs are finite, so training diverged: lower --lr or lengthen the warm-up, keep "
                   "--clip-norm (paper: 1.0), train in float32 (without --fp16/--amp) to confirm, and check these "
                   "utterances' transcripts against their audio (a transcript far longer than its audio makes "
                   "CTC and the quantity loss explode).")
    return " ".join(msg)


def _nonfinite_terms(terms: Mapping[str, torch.Tensor]) -> Optional[str]:
    """"ce=nan, quantity=inf" for the non-finite terms, or None (one host sync)."""
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return None
    return ", ".join(f"{name}={float(v):g}" for name, v, ok in zip(terms, values, finite) if not ok)


def _batch_size(sample: Mapping) -> int:
    return len(sample.get("utt_id") or sample.get("id", []))


def float16_forward(net_output: Mapping) -> bool:
    """Did the model's forward pass compute in float16? (``--fp16``: half parameters, so a half
    encoder output; or float16 autocast, ``--amp``.) The encoder output tells."""
    from fairseq_hkd.models.cif_middleware import is_float16_compute  # models import nothing from here

    encoder_out = net_output.get("encoder_out")
    return encoder_out is not None and is_float16_compute(encoder_out)


def overflow_message(terms: Mapping[str, torch.Tensor], sample: Mapping) -> str:
    return (f"float16 overflow in the forward pass (loss term(s) {_nonfinite_terms(terms)}, batch of "
            f"{_batch_size(sample)} utterance(s): {_ids(sample)}): fairseq skips the update and lowers the loss scale")


def overflow_loss(*modules: torch.nn.Module) -> torch.Tensor:
    """A loss connected to one element of every trainable parameter of ``modules`` whose backward
    gives that element an inf gradient (and the others 0): any loss scaling keeps it inf, so fairseq's
    FP16Optimizer / MemoryEfficientFP16Optimizer find an inf gradient norm and raise OverflowError (the
    Trainer then skips the update and lowers the scale), and AMP's GradScaler skips its step. Every
    parameter takes part, as DDP requires."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return sum((p.reshape(-1)[:1].float().sum() * float("inf") for p in params), torch.zeros(()))


def zero_loss(*modules: torch.nn.Module) -> torch.Tensor:
    """A float32 zero connected to one element of every trainable parameter of ``modules``: its
    backward gives every parameter an exact zero gradient (none NaN, none missing), so a skipped
    batch still takes part in DDP's gradient all-reduce and fp16 loss scaling like any other."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return sum((p.reshape(-1)[:1].float().sum() * 0.0 for p in params), torch.zeros(()))
