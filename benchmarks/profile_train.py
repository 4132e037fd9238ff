"""Where a training step spends its time: torch.profiler self-CPU time of full training steps
(criterion forward, backward, Adam step), grouped into operator categories.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_train.py                     # cif_tiny + paper
    .venv/bin/python benchmarks/profile_train.py --arch cif_tiny --dropout-impl packed --steps 5
    .venv/bin/python benchmarks/profile_train.py --arch cif_tiny_80ms --preset demo --dropout-impl packed

Batches and models come from benchmarks/bench_hkd.py (the same synthetic batches as
bench_train.py, the demo's shapes for cif_tiny: B=16, 3 s, WordPiece-sized vocabulary). Each
category's share is its operators' self time over the steps' total self time; ``--top`` lists the
most expensive operators as well.
"""
import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hkd import build_setup, make_batches  # noqa: E402
from bench_train import PRESETS, train_step  # noqa: E402

from fairseq_hkd.criterions.cif import CifCriterion, CifCriterionConfig  # noqa: E402
from fairseq_hkd.models.dropout import use_packed_dropout  # noqa: E402

# Operator name fragments -> category (first match wins; matched against the lower-cased name).
CATEGORIES = [
    ("dropout masks", ("bernoulli", "dropout", "random_")),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("convolutions", ("conv", "mkldnn_convolution")),
    ("softmax / log-softmax", ("softmax",)),
    ("layer / batch norm", ("layer_norm", "batch_norm")),
    ("CTC loss", ("ctc",)),
    ("CIF op + plan", ("embedding_bag", "cumsum", "cif")),
    ("copies / casts", ("copy_", "aten::to", "contiguous", "clone", "aten::cat", "index", "gather", "scatter")),
    ("elementwise", ("add", "mul", "div", "sub", "silu", "sigmoid", "relu", "glu", "where", "masked_fill",
                     "fill_", "tanh", "exp", "neg", "sqrt", "pow", "sum", "mean", "max", "clamp", "abs")),
    ("optimizer (Adam)", ("adam", "foreach", "lerp", "addcdiv", "addcmul")),
]


def categorise(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["cif_tiny", "cif_conformer_paper"])
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="batch shapes (bench_train.py's PRESETS); default: the preset named like the arch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dropout-impl", choices=["torch", "packed"], default="torch")
    p.add_argument("--top", type=int, default=8, help="also list the N most expensive operators")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for arch in a.arch:
        if (a.preset or arch) not in PRESETS:
            p.error(f"no batch shapes named {arch!r}: add --preset {{{','.join(PRESETS)}}}")
        B, T, S, V, D = PRESETS[a.preset or arch]
        d, model, task = build_setup(arch, V, D)
        if a.dropout_impl == "packed":
            use_packed_dropout(model)
        model.train()
        crit = CifCriterion(CifCriterionConfig(sentence_avg=False), task)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        batches = make_batches(2, B, T, S, V, d)
        train_step(model, crit, opt, batches[0], "cpu")  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(a.steps):
                train_step(model, crit, opt, batches[i % 2], "cpu")
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        by_cat = collections.Counter()
        for e in events:
            by_cat[categorise(e.key)] += e.self_cpu_time_total
        total = sum(by_cat.values())
        print(f"\n{arch} (B={B}, T={T}, V={V}), cif criterion, {a.threads} thread(s), dropout {a.dropout_impl}: "
              f"{total / 1e3 / a.steps:.0f} ms of operator self time per step")
        print(f"{'category':24s} {'ms/step':>8s} {'share':>6s}")
        for cat, us in by_cat.most_common():
            print(f"{cat:24s} {us / 1e3 / a.steps:8.1f} {100 * us / total:5.1f}%")
        print(f"top {a.top} operators:")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: a.top]:
            print(f"  {e.key:40s} {e.self_cpu_time_total / 1e3 / a.steps:8.1f} ms  ({categorise(e.key)})")


if __name__ == "__main__":
    main()
