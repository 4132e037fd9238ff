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
PRESETS = {"cif_tiny": (16, 300, 30, 30, 384), "cif_conformer_paper": (8, 450, 15, 4234, 768)}


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=list(PRESETS), help="architectures")
    p.add_argument("--batch-size", type=int, default=None, help="utterances per batch (default: per arch)")
    p.add_argument("--frames", type=int, default=None, help="longest utterance in 10 ms frames")
    p.add_argument("--tokens", type=int, default=None, help="target tokens of the longest utterance")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
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
