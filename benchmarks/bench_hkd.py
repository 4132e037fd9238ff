"""Training-step time of ``cif_hkd`` vs ``cif`` on the same batches (target: overhead <= 10 %).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hkd.py                     # cif_tiny + paper model
    .venv/bin/python benchmarks/bench_hkd.py --arch cif_conformer_paper --batch-size 8 --frames 600 \\
        --teacher-dim 768 --vocab 4234 --steps 10 [--device cuda]

A step is what fairseq's Trainer does per update: criterion forward, backward, optimizer step
(Adam). The ``cif_hkd`` step also reads the batch's teacher states from a memory-mapped teacher
store (float16, written here with random states) and pads them the way the collater does, so the
measured overhead includes the store I/O, the two projections, the N x N similarity matrix of ACD,
the negative sampling and LRD. Both criteria run on identical model copies and identical batches,
interleaved step by step (cif, hkd, cif, hkd, ...) so that load changes on a shared machine hit both
alike; medians are compared. Paper settings: tau 0.02, K 700 (floor(0.8 N) when N <= 700).
"""
import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq.data import Dictionary  # noqa: E402

from fairseq_hkd.criterions.cif import CifCriterion, CifCriterionConfig  # noqa: E402
from fairseq_hkd.criterions.cif_hkd import CifHkdCriterion, CifHkdCriterionConfig  # noqa: E402
from fairseq_hkd.models.cif_model import CifModel, CifModelConfig  # noqa: E402
from fairseq_hkd.teacher.store import TeacherStoreWriter, open_teacher_store  # noqa: E402


class _Task:
    def __init__(self, dictionary, teacher_dim, student_dims):
        self.target_dictionary, self.teacher_dim, self.student_dims = dictionary, teacher_dim, student_dims


def arch_config(arch: str) -> CifModelConfig:
    import argparse as ap
    import dataclasses

    from fairseq.models import ARCH_CONFIG_REGISTRY

    ns = ap.Namespace(**{f.name: None for f in dataclasses.fields(CifModelConfig)})
    ns.share_decoder_input_output_embed = False
    ARCH_CONFIG_REGISTRY[arch](ns)
    return CifModelConfig(**vars(ns))


def make_batches(n, batch_size, frames, tokens, vocab, dictionary, seed=0):
    """``n`` batches: fbank [B, T, 80] (lengths 70-100 % of T), targets of ~tokens (+ </s>)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        T = torch.randint(int(0.7 * frames), frames + 1, (batch_size,), generator=g)
        S = torch.clamp((T.float() / frames * tokens).long(), min=1) + 1
        x = torch.randn(batch_size, frames, 80, generator=g)
        x[torch.arange(frames)[None, :] >= T[:, None]] = 0.0
        target = torch.full((batch_size, int(S.max())), dictionary.pad())
        prev = target.clone()
        for b in range(batch_size):
            y = torch.randint(dictionary.nspecial, vocab, (int(S[b]) - 1,), generator=g)
            target[b, : S[b] - 1], target[b, S[b] - 1] = y, dictionary.eos()
            prev[b, 0], prev[b, 1 : S[b]] = dictionary.eos(), y
        batches.append({"utt_id": [f"b{i}u{b}" for b in range(batch_size)],
                        "net_input": {"src_tokens": x, "src_lengths": T, "prev_output_tokens": prev},
                        "target": target, "target_lengths": S, "ntokens": int(S.sum()), "nsentences": batch_size})
    return batches


def write_store(directory, batches, dim):
    lengths = [(u, int(s)) for bt in batches for u, s in zip(bt["utt_id"], bt["target_lengths"])]
    w = TeacherStoreWriter(directory, "train", lengths, dim, "float16", {"plm": {"name": "random"}})
    rng = np.random.default_rng(0)
    for u, s in lengths:
        w.write(u, rng.standard_normal((s, dim)).astype(np.float32))
    w.close()
    return open_teacher_store(directory, "train")


def with_teacher(sample, store):
    """Collater's padding of the teacher states: [B, S, D] float32, 0 at padding."""
    B, S = sample["target"].shape
    teacher = torch.zeros(B, S, store.dim)
    for b, u in enumerate(sample["utt_id"]):
        t = torch.from_numpy(np.asarray(store.get(u), dtype=np.float32))
        teacher[b, : t.size(0)] = t
    return dict(sample, teacher_states=teacher)


def to_device(sample, device):
    out = {}
    for k, v in sample.items():
        if isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v.to(device, non_blocking=True) if torch.is_tensor(v) else v
    return out


def step(model, crit, opt, sample, device):
    opt.zero_grad(set_to_none=True)
    loss, _, log = crit(model, sample)
    loss.backward()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return log


def build_setup(arch, vocab, teacher_dim, **overrides):
    """-> (dictionary of `vocab` symbols, model of `arch` (seed 0) with the config fields in
    `overrides` replaced, task with a teacher of `teacher_dim` dims projected from the CIF and
    decoder states)."""
    d = Dictionary()
    for i in range(vocab - d.nspecial):
        d.add_symbol(f"w{i}")
    cfg = arch_config(arch)
    for name, value in overrides.items():
        setattr(cfg, name, value)
    torch.manual_seed(0)
    base = CifModel.build_model(cfg, _Task(d, None, None))
    dims = {"cif": cfg.encoder_embed_dim, "decoder": cfg.decoder_embed_dim}
    return d, base, _Task(d, teacher_dim, dims)


def run(arch, batch_size, frames, tokens, vocab, teacher_dim, steps, warmup, device, negatives):
    d, base, task = build_setup(arch, vocab, teacher_dim)
    cif = CifCriterion(CifCriterionConfig(sentence_avg=False), task)
    hkd = CifHkdCriterion(CifHkdCriterionConfig(sentence_avg=False, acd_negatives=negatives), task)
    batches = make_batches(4, batch_size, frames, tokens, len(d), d)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(tmp, batches, teacher_dim)
        runs = {}
        for name, crit in (("cif", cif), ("cif_hkd", hkd)):
            model = copy.deepcopy(base).to(device).train()
            crit = crit.to(device)
            params = list(model.parameters()) + list(crit.parameters())
            runs[name] = (model, crit, torch.optim.Adam(params, lr=1e-4))
        times = {"cif": [], "cif_hkd": []}
        ntok = []
        for i in range(warmup + steps):
            sample = batches[i % len(batches)]
            for name in ("cif", "cif_hkd"):
                model, crit, opt = runs[name]
                t0 = time.perf_counter()
                s = with_teacher(sample, store) if name == "cif_hkd" else sample
                step(model, crit, opt, to_device(s, device), device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
            ntok.append(sample["ntokens"])
        terms_ms = 1e3 * hkd_terms_time(runs["cif_hkd"], batches[0], store, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(h / c for h, c in zip(times["cif_hkd"], times["cif"]))  # paired steps
    n = statistics.mean(ntok)
    k = negatives if n > negatives else int(0.8 * n)
    print(f"{arch:20s} B={batch_size} T={frames} N~{n:.0f} tokens (K={k}) D_teacher={teacher_dim} V={vocab} "
          f"on {device}: cif {1e3 * med['cif']:.1f} ms/step, cif_hkd {1e3 * med['cif_hkd']:.1f} ms/step, "
          f"overhead {100 * (ratio - 1):+.1f} % (median of {steps} paired ratios {ratio:.3f}; target <= 1.10); "
          f"HKD terms alone {terms_ms:.1f} ms = {100 * terms_ms / 1e3 / med['cif']:.1f} % of a cif step")
    return ratio


def hkd_terms_time(run_state, sample, store, device, repeats=5):
    """Median time of what cif_hkd adds on fixed model outputs: store read + padding, projections,
    negative sampling, ACD and LRD forward and backward (a less noisy view of the overhead)."""
    from fairseq_hkd.criterions import losses

    model, crit, _ = run_state
    s = to_device(sample, device)
    with torch.no_grad():
        out = model(**s["net_input"], target_lengths=s["target_lengths"])
    keep = s["target"].ne(1)
    ts = []
    for _ in range(repeats):
        c = out["cif"].embeddings.detach().requires_grad_()
        d = out["decoder_states"].detach().requires_grad_()
        t0 = time.perf_counter()
        e = to_device(with_teacher(sample, store), device)["teacher_states"][keep]
        n = e.size(0)
        negs = losses.sample_negatives(n, losses.acd_num_negatives(n, crit.cfg.acd_negatives), device=e.device)
        acd, correct = losses.acd_loss(crit.acd_proj(c[keep]), e, negs, crit.cfg.acd_temperature)
        lrd = losses.lrd_loss(crit.lrd_proj(d[keep]), e)
        (acd + 0.01 * lrd).backward()
        int(correct)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=None, help="architectures (default: cif_tiny, cif_conformer_paper)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="fbank frames per utterance (10 ms)")
    p.add_argument("--tokens", type=int, default=None, help="target tokens of the longest utterance")
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--teacher-dim", type=int, default=None)
    p.add_argument("--negatives", type=int, default=700)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    # per architecture: (batch, frames, tokens, vocab, teacher dim) = a small batch of that setting
    presets = {"cif_tiny": (16, 300, 30, 30, 384),                   # synth demo: chars, MiniLM teacher
               "cif_conformer_paper": (8, 500, 15, 4234, 768)}      # AISHELL-1: ~5 s, 15 chars, BERT-base
    ratios = []
    for arch in a.arch or list(presets):
        B, T, S, V, D = presets.get(arch, presets["cif_conformer_paper"])
        ratios.append(run(arch, a.batch_size or B, a.frames or T, a.tokens or S, a.vocab or V,
                          a.teacher_dim or D, a.steps, a.warmup, a.device, a.negatives))
    print(f"worst overhead {100 * (max(ratios) - 1):+.1f} % ({'OK' if max(ratios) <= 1.10 else 'ABOVE'} target 10 %)")


if __name__ == "__main__":
    main()
