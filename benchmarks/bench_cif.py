"""Benchmark the CIF op: ours vs a sequential loop vs torch-cif 0.2.0, ratios from one run.

Usage:
    .venv/bin/python benchmarks/bench_cif.py                      # CPU, one thread, both sizes
    .venv/bin/python benchmarks/bench_cif.py --sizes 8,500,256 --rounds 9 --loop-repeats 3
    .venv/bin/python benchmarks/bench_cif.py --device cuda        # GPU section (needs CUDA)

Every method sees the same inputs: alphas scaled so that each utterance sums to its target
length S (the training call), tail 0.5, a random upstream gradient. Ours: ``cif(...,
tail_threshold=0.5, max_tokens=S_max)``; torch-cif: ``cif_function(h, alpha,
target_lengths=S)`` (its training path); the loop: a batched loop over time in float32 with
autograd (the shape of the authors' and FunASR's code). Timings are the best and the median
over rounds that run each method a few times in a row (so it meets its own steady allocator
state, as in a training loop); rounds interleave the methods so load changes hit them alike.
The GPU section also reports the forward's bandwidth: (h read + embeddings written) / time,
as a percentage of a measured device-to-device copy.
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

from fairseq_hkd.ops.cif import cif

try:
    from torch_cif import cif_function
except ImportError:  # pragma: no cover - benchmark-only dependency (requirements-dev.txt)
    cif_function = None


def loop_cif(alpha, h, threshold=1.0):
    """Sequential CIF, batched over B, looping over T (float32, autograd-able)."""
    B, T, C = h.shape
    acc = alpha.new_zeros(B)
    state = h.new_zeros(B, C)
    fired: List[torch.Tensor] = []
    fires: List[torch.Tensor] = []
    for t in range(T):
        a_t, h_t = alpha[:, t], h[:, t]
        room = threshold - acc
        acc = acc + a_t
        fire = acc >= threshold
        used = torch.where(fire, room, a_t)
        state = state + used[:, None] * h_t
        fired.append(state)
        fires.append(fire)
        state = torch.where(fire[:, None], (a_t - used)[:, None] * h_t, state)
        acc = torch.where(fire, acc - threshold, acc)
    frames, mask = torch.stack(fired, 1), torch.stack(fires, 1)
    lengths = mask.sum(1)
    out = h.new_zeros(B, int(lengths.max()), C)
    for b in range(B):
        out[b, : int(lengths[b])] = frames[b][mask[b]]
    return out


def make_inputs(B, T, C, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(B, T, generator=g) * 0.9 + 0.05
    target = alpha.sum(1).round().clamp(min=1)
    alpha = (alpha * (target / alpha.sum(1))[:, None]).clamp(max=1.0)
    h = torch.randn(B, T, C, generator=g)
    n = int(target.max())
    grad = torch.randn(B, n, C, generator=g)
    return alpha.to(device), h.to(device), target.long().to(device), grad.to(device)


def methods(alpha, h, target, grad, with_loop) -> Dict[str, Dict[str, Callable]]:
    n = grad.size(1)

    def fwd_bwd(run):
        def step():
            a, x = alpha.detach().requires_grad_(), h.detach().requires_grad_()
            out = run(a, x)
            out.backward(grad[:, : out.size(1)])
        return step

    def ours(a, x):
        return cif(a, x, None, 1.0, 0.5, max_tokens=n).embeddings

    table = {"ours": {"fwd": lambda: ours(alpha, h), "fwd+bwd": fwd_bwd(ours)}}
    if cif_function is not None:
        def theirs(a, x):
            return cif_function(x, a, target_lengths=target)["cif_out"][0]
        table["torch-cif"] = {"fwd": lambda: theirs(alpha, h), "fwd+bwd": fwd_bwd(theirs)}
    if with_loop:
        table["loop"] = {"fwd": lambda: loop_cif(alpha, h), "fwd+bwd": fwd_bwd(loop_cif)}
    return table


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def copy_bandwidth(device, nbytes=1 << 30) -> float:
    """Measured device-to-device copy bandwidth in GB/s (read + write)."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(10))
    return 2 * nbytes / (best * 1e-3) / 1e9


def bench_size(B, T, C, args) -> None:
    alpha, h, target, grad = make_inputs(B, T, C, args.device)
    table = methods(alpha, h, target, grad, with_loop=args.loop_repeats > 0)
    times: Dict[str, Dict[str, List[float]]] = {m: {"fwd": [], "fwd+bwd": []} for m in table}
    for m in [m for m in table if m != "loop"]:  # warm-up (Triton compiles here)
        for phase in ("fwd", "fwd+bwd"):
            table[m][phase]()
    for r in range(args.rounds):
        for m in table:
            burst = (1 if r < args.loop_repeats else 0) if m == "loop" else args.burst
            for _ in range(burst):
                with torch.no_grad():
                    times[m]["fwd"].append(timed(table[m]["fwd"], args.device))
                times[m]["fwd+bwd"].append(timed(table[m]["fwd+bwd"], args.device))
    print(f"\n(B, T, C) = ({B}, {T}, {C}), device {args.device}, "
          f"threads {torch.get_num_threads()}, {args.rounds} rounds x {args.burst} runs")
    for stat, reduce in (("best", min), ("median", statistics.median)):
        red = {m: {p: reduce(v) for p, v in d.items()} for m, d in times.items()}
        header = f"{'fwd ms':>10} {'fwd+bwd ms':>12} {'fwd x':>8} {'fwd+bwd x':>10}"
        print(f"{stat + ' of':<10} {header}")
        for m in red:
            f, fb = red[m]["fwd"], red[m]["fwd+bwd"]
            rf, rfb = f / red["ours"]["fwd"], fb / red["ours"]["fwd+bwd"]
            print(f"{m:<10} {f:>10.2f} {fb:>12.2f} {rf:>8.2f} {rfb:>10.2f}")
    print("(x = that method's time / ours: how many times faster ours is; 'best' is the least\n"
          " disturbed by other load on a shared machine)")
    med = {m: {p: statistics.median(v) for p, v in d.items()} for m, d in times.items()}
    if args.device == "cuda":
        report_bandwidth(alpha, h, grad.size(1), med["ours"]["fwd"], args)


def report_bandwidth(alpha, h, n, cif_ms, args) -> None:
    """Forward bytes (h read + embeddings written) per second, whole cif() call and the
    gather kernel alone, as a share of the measured copy bandwidth."""
    from fairseq_hkd.ops.cif.op import cif_gather
    from fairseq_hkd.ops.cif.plan import cif_plan

    B, T, C = h.shape
    nbytes = (h.numel() + B * n * C) * h.element_size()
    plan = cif_plan(alpha, None, 1.0, 0.5, n, True)
    wl, wr = plan.w_left.float(), plan.w_right.float()
    with torch.no_grad():
        gather = [timed(lambda: cif_gather(h, wl, wr, plan.idx_left, plan.idx_right, n,
                                           "triton"), args.device) for _ in range(20)]
    peak = copy_bandwidth(args.device)
    for what, ms in (("cif() forward", cif_ms), ("gather kernel", statistics.median(gather))):
        gbs = nbytes / (ms * 1e-3) / 1e9
        print(f"{what}: {ms * 1e3:.1f} us, {gbs:.0f} GB/s = {100 * gbs / peak:.0f}% of the "
              f"measured copy bandwidth ({peak:.0f} GB/s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["8,500,256", "16,1000,512"],
                        help="B,T,C triples")
    parser.add_argument("--rounds", type=int, default=7,
                        help="rounds; each runs every method --burst times in a row")
    parser.add_argument("--burst", type=int, default=3,
                        help="consecutive runs per method and round (the loop runs once)")
    parser.add_argument("--loop-repeats", type=int, default=1,
                        help="repeats of the (slow) loop; 0 skips it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_cif: --device cuda needs a CUDA device")
    torch.set_num_threads(args.threads)
    if cif_function is None:
        print("torch-cif is not installed (pip install --no-deps torch-cif==0.2.0): skipped")
    for size in args.sizes:
        B, T, C = (int(x) for x in size.split(","))
        bench_size(B, T, C, args)


if __name__ == "__main__":
    main()
