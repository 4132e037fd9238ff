"""Training throughput: utterances/s, input frames/s and target tokens/s of full training steps
(criterion forward, backward, gradient clipping, Adam step) on fixed synthetic batches, for
``cif_tiny`` and ``cif_conformer_paper`` with the ``cif`` and ``cif_hkd`` criteria.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py                 # CPU, 1 thread, both archs
    .venv/bin/python benchmarks/bench_train.py --threads 2 --steps 5
    .venv/bin/python benchmarks/bench_train.py --arch cif_conformer_paper --batch-size 64 --device cuda

Batches have realistic shapes for each setting: ``cif_tiny`` the synthesized demo corpus (3 s
utterances, ~30 characters, MiniLM teacher 384-d), ``cif_conformer_paper`` AISHELL-1 (4.5 s,
~15 characters, 4,234 characters, bert-base-chinese 768-d); utterance lengths vary from 70 to 100 %
of the longest, as after fairseq's length-sorted batching. Frames are 10 ms fbank frames of real
audio (padding excluded), so frames/s / 100 is seconds of audio trained per second. The ``cif_hkd``
step includes reading and padding the teacher states from a memory-mapped store. Timings are medians
of ``--steps`` steps after ``--warmup`` steps; the two criteria alternate step by step so that load
changes on a shared machine hit both alike.

Batch construction, the teacher store and the step come from benchmarks/bench_hkd.py (same inputs).

``--compare BEFORE AFTER`` instead times two training set-ups on the same batches, step by step
in turn, and prints updates/s of each and their ratio. A set-up is ``ARCH[:OPTION=VALUE,...]``
with options ``dropout=torch|packed|none`` (none: the model built with encoder, weight-predictor
and decoder dropout 0, as the demo's recipe since 2026-12-05) and ``bf16=no|yes|auto`` (CPU autocast, as the task's
``--autocast-bf16``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --preset demo \
        --compare cif_tiny:dropout=torch,bf16=no cif_tiny_80ms:dropout=packed,bf16=auto
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_hkd import build_setup, make_batches, to_device, with_teacher, write_store  # noqa: E402

from fairseq_hkd.criterions.cif import CifCriterion, CifCriterionConfig  # noqa: E402
from fairseq_hkd.criterions.cif_hkd import CifHkdCriterion, CifHkdCriterionConfig  # noqa: E402

# arch: (batch size, longest utterance in frames, its target tokens, vocabulary, teacher dim)
PRESETS = {"cif_tiny": (16, 300, 30, 30, 384), "cif_conformer_paper": (8, 450, 15, 4234, 768),
           # the synthesized demo's batches: <= 5,000 padded frames of ~3 s utterances, WordPiece units
           "demo": (16, 300, 13, 700, 384)}


def train_step(model, criterion, optimizer, sample, device, clip_norm=1.0):
    """What fairseq's Trainer does per update, without its bookkeeping."""
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = criterion(model, sample)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arch, batch_size, frames, tokens, vocab, teacher_dim, steps, warmup, device):
    """-> {criterion: (seconds per step [steps]), ...}, the batches' mean (utterances, frames, tokens)."""
    d, base, task = build_setup(arch, vocab, teacher_dim)
    criteria = {"cif": CifCriterion(CifCriterionConfig(sentence_avg=False), task),
                "cif_hkd": CifHkdCriterion(CifHkdCriterionConfig(sentence_avg=False), task)}
    batches = make_batches(4, batch_size, frames, tokens, vocab, d)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(tmp, batches, teacher_dim)
        runs = {}
        for name, crit in criteria.items():
            model, crit = copy.deepcopy(base).to(device).train(), crit.to(device)
            runs[name] = (model, crit, torch.optim.Adam(list(model.parameters()) + list(crit.parameters()),
                                                        lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01))
        times = {name: [] for name in runs}
        for i in range(warmup + steps):
            sample = batches[i % len(batches)]
            for name, (model, crit, opt) in runs.items():
                t0 = time.perf_counter()
                s = with_teacher(sample, store) if name == "cif_hkd" else sample
                train_step(model, crit, opt, to_device(s, device), device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    per_batch = [(b["nsentences"], int(b["net_input"]["src_lengths"].sum()), b["ntokens"]) for b in batches]
    used = [per_batch[i % len(batches)] for i in range(warmup, warmup + steps)]
    mean = tuple(statistics.mean(x[j] for x in used) for j in range(3))
    return times, mean, sum(p.numel() for p in base.parameters())


def parse_setup(spec: str):
    """'ARCH:dropout=packed,bf16=auto' -> (arch, dropout impl, use bf16 autocast)."""
    from fairseq_hkd.compat import cpu_has_native_bf16

    arch, _, opts = spec.partition(":")
    kv = dict(o.split("=", 1) for o in opts.split(",") if o)
    unknown = set(kv) - {"dropout", "bf16"}
    if unknown:
        raise SystemExit(f"--compare {spec}: unknown option(s) {sorted(unknown)} (dropout=..., bf16=...)")
    bf16 = kv.get("bf16", "no")
    use_bf16 = bf16 == "yes" or (bf16 == "auto" and cpu_has_native_bf16())
    return arch, kv.get("dropout", "torch"), use_bf16


def compare(specs, preset, steps, warmup):
    """Two set-ups on the same batches, steps interleaved; -> {spec: [seconds per step]}."""
    import contextlib

    from fairseq_hkd.models.dropout import use_packed_dropout

    B, T, S, V, D = PRESETS[preset]
    runs, batches = {}, None
    for spec in specs:
        arch, dropout, bf16 = parse_setup(spec)
        if dropout not in ("torch", "packed", "none"):
            raise SystemExit(f"--compare {spec}: dropout={dropout}: use torch, packed or none")
        no_dropout = dict(dropout=0.0, cif_dropout=0.0, decoder_dropout=0.0) if dropout == "none" else {}
        d, model, task = build_setup(arch, V, D, **no_dropout)
        if dropout == "packed":
            use_packed_dropout(model)
        crit = CifCriterion(CifCriterionConfig(sentence_avg=False), task)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        runs[spec] = (model.train(), crit, opt, ctx, bf16)
        batches = batches or make_batches(4, B, T, S, V, d)
    times = {spec: [] for spec in specs}
    for i in range(warmup + steps):
        for spec, (model, crit, opt, ctx, _) in runs.items():
            t0 = time.perf_counter()
            with ctx():  # the forward under autocast; backward and step follow its dtypes
                opt.zero_grad(set_to_none=True)
                loss, _, _ = crit(model, batches[i % len(batches)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if i >= warmup:
                times[spec].append(time.perf_counter() - t0)
    return times, {spec: r[4] for spec, r in runs.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["cif_tiny", "cif_conformer_paper"],
                   help="architectures (batch shapes: the preset of that name, else cif_conformer_paper's)")
    p.add_argument("--batch-size", type=int, default=None, help="utterances per batch (default: per arch)")
    p.add_argument("--frames", type=int, default=None, help="longest utterance in 10 ms frames")
    p.add_argument("--tokens", type=int, default=None, help="target tokens of the longest utterance")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                   help="time two set-ups ARCH[:dropout=torch|packed|none,bf16=no|yes|auto] on the same batches")
    p.add_argument("--preset", default="demo", choices=list(PRESETS), help="batch shapes for --compare")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.compare:
        times, bf16 = compare(a.compare, a.preset, a.steps, a.warmup)
        B, T, S, V, D = PRESETS[a.preset]
        print(f"--preset {a.preset}: B={B}, T<={T}, ~{S} tokens, V={V}; {a.threads} thread(s); "
              f"median of {a.steps} interleaved steps after {a.warmup} warm-up")
        med = {spec: statistics.median(ts) for spec, ts in times.items()}
        for spec in a.compare:
            print(f"  {spec:55s} {1e3 * med[spec]:8.1f} ms/step {1 / med[spec]:6.2f} updates/s (bf16 {bf16[spec]})")
        before, after = a.compare
        paired = statistics.median(b / n for b, n in zip(times[before], times[after]))
        print(f"speed-up AFTER / BEFORE: {med[before] / med[after]:.2f}x (median of paired step ratios {paired:.2f}x)")
        return
    where = (torch.cuda.get_device_name() if a.device.startswith("cuda")
             else f"{platform.processor() or platform.machine()}, {a.threads} thread(s) of {os.cpu_count()} cores")
    print(f"training throughput on {a.device} ({where}), torch {torch.__version__}, "
          f"median of {a.steps} steps after {a.warmup} warm-up", flush=True)
    header = (f"{'arch':20s} {'params':>7s} {'criterion':9s} {'B':>3s} {'T max':>5s} {'ms/step':>8s} "
              f"{'utt/s':>7s} {'frames/s':>9s} {'tokens/s':>8s} {'audio x RT':>10s}")
    print(header)
    print("-" * len(header))
    for arch in a.arch:
        B, T, S, V, D = PRESETS.get(arch, PRESETS["cif_conformer_paper"])
        B, T, S = a.batch_size or B, a.frames or T, a.tokens or S
        times, (utts, frames, tokens), n_params = measure(arch, B, T, S, V, D, a.steps, a.warmup, a.device)
        for name, ts in times.items():
            sec = statistics.median(ts)
            print(f"{arch:20s} {n_params / 1e6:6.1f}M {name:9s} {B:3d} {T:5d} {1e3 * sec:8.1f} {utts / sec:7.2f} "
                  f"{frames / sec:9.0f} {tokens / sec:8.0f} {frames / sec / 100:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
