"""CPU real-time factor, model size and peak memory: PyTorch vs onnxruntime fp32 vs int8, in one run.

Usage:
    nice -n 19 .venv/bin/python benchmarks/bench_onnx.py                  # cif_conformer_paper
    nice -n 19 .venv/bin/python benchmarks/bench_onnx.py --arch cif_tiny_80ms --vocab 693 --rounds 3

The model is ``benchmarks/bench_decode.py``'s (random weights, a CIF weight bias that fires at
``--token-rate`` units/s, </s> suppressed so every utterance runs all its decoder steps), exported
with ``fairseq_hkd.export.onnx_export.export_model_dir`` and quantized with ``quantize_model_dir``.
Inputs: ``--batch`` random 80-dim feature sequences, 70-100 % of ``--seconds`` long, decoded as one
batch (encoder + CIF + search, beam ``--beam``): the front end (fbank) is the same code for every
backend and is not timed.

Every measurement runs in a fresh process (``--worker``): PyTorch with ``torch.set_num_threads``,
onnxruntime with that many intra-op threads and torch and fairseq made unimportable (as in a
deployment, so its peak memory holds no torch). A worker decodes once to warm up, then
``--repeats`` times; its RTF is the median. ``--rounds`` rounds run all configurations in turn (load
changes on a shared machine hit them alike); the table reports the median over rounds, peak RSS
the largest (the worker's VmHWM, ``peak_memory.py``: interpreter, libraries, model, activations). Besides
wall-clock RTF it reports CPU RTF (process CPU time, all threads, per audio second): at one thread
that is what the wall clock shows on an idle core, and unlike it does not grow with other load.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import peak_rss_mib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "fairseq", "fairseq_cli", "triton"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
"""


def make_inputs(batch: int, seconds: float, seed: int = 1):
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = int(seconds * 100)
    lengths = np.linspace(frames * 0.7, frames, batch).round().astype(int)
    return [rng.standard_normal((n, 80)).astype(np.float32) for n in lengths]


def build(arch: str, vocab: int, token_rate: float):
    sys.path.insert(0, str(HERE))
    from bench_decode import build_model

    return build_model(arch, vocab, token_rate)


# workers -----------------------------------------------------------------------------------------
def worker_torch(a, feats):
    import torch

    from fairseq_hkd.generation.cif_generator import CifGenerator

    torch.set_num_threads(a.threads)
    model = build(a.arch, a.vocab, a.token_rate)
    gen = CifGenerator([model], model.decoder.dictionary, beam_size=a.beam)
    lengths = torch.tensor([f.shape[0] for f in feats])
    src = torch.zeros(len(feats), int(lengths.max()), 80)
    for b, f in enumerate(feats):
        src[b, : f.shape[0]] = torch.from_numpy(f)

    def run():
        with torch.inference_mode():
            return gen.decode(src, lengths)

    eos = model.decoder.dictionary.eos()
    return run, lambda out: [[int(t) for t in h[0]["tokens"] if int(t) != eos] for h in out.hypos]


def worker_onnx(a, feats):
    from fairseq_hkd.runtime.recognizer import OnnxRecognizer

    rec = OnnxRecognizer(a.model_dir, beam=a.beam, threads=a.threads)
    return (lambda: rec.decode_features(feats)), (lambda out: [d.tokens for d in out])


def worker(a):
    feats = make_inputs(a.batch, a.seconds)
    audio_s = sum(f.shape[0] for f in feats) / 100.0
    run, steps = (worker_torch if a.worker == "torch" else worker_onnx)(a, feats)
    out = run()  # warm-up
    times, cpu = [], []
    for _ in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = peak_rss_mib()
    print("RESULT " + json.dumps({"rtf": statistics.median(times) / audio_s,
                                  "cpu_rtf": statistics.median(cpu) / audio_s, "peak_mib": peak,
                                  "tokens": steps(out), "audio_s": audio_s,
                                  "torch_loaded": "torch" in sys.modules}))


# orchestration -----------------------------------------------------------------------------------
def run_worker(a, kind: str, threads: int, model_dir: str = "") -> dict:
    argv = [sys.executable, "-c", (BLOCK if kind == "onnx" else "") +
            f"import sys; sys.argv = {[str(HERE / 'bench_onnx.py')] + worker_args(a, kind, threads, model_dir)!r}; "
            f"sys.path.insert(0, {str(HERE)!r}); import bench_onnx; bench_onnx.main()"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {threads} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def worker_args(a, kind, threads, model_dir):
    return ["--worker", kind, "--threads", str(threads), "--model-dir", model_dir, "--arch", a.arch,
            "--vocab", str(a.vocab), "--token-rate", str(a.token_rate), "--batch", str(a.batch),
            "--seconds", str(a.seconds), "--beam", str(a.beam), "--repeats", str(a.repeats)]


def export_dirs(a, root: str):
    """fp32, int8 and int8-encoder model directories of the benchmark model; the PyTorch state dict's size."""
    from types import SimpleNamespace

    import torch

    from fairseq_hkd.export.onnx_export import export_model_dir, quantize_model_dir

    model = build(a.arch, a.vocab, a.token_rate)
    d = model.decoder.dictionary
    dict_path = os.path.join(root, "dict.txt")
    d.save(dict_path)
    cfg = SimpleNamespace(cmvn="none", cmvn_stats=None, data=root, min_source_frames=8, strict_sample_rate=False,
                          multichannel="downmix", unit="char", lowercase=False, cif_eos_slack=0)
    t0 = time.perf_counter()
    fp32, int8, int8enc = (os.path.join(root, x) for x in ("fp32", "int8", "int8-encoder"))
    export_model_dir(model, SimpleNamespace(cfg=cfg, target_dictionary=d), dict_path, fp32)
    t_export = time.perf_counter() - t0
    quantize_model_dir(fp32, int8)
    quantize_model_dir(fp32, int8enc, decoder=False)
    pt = os.path.join(root, "model.pt")
    torch.save(model.state_dict(), pt)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return fp32, int8, int8enc, os.path.getsize(pt), n_params, t_export


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".onnx"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="cif_conformer_paper")
    p.add_argument("--vocab", type=int, default=4234)
    p.add_argument("--token-rate", type=float, default=3.2, help="CIF fires per second")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="longest utterance")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--worker", choices=["torch", "onnx"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        a.threads = int(a.threads)
        return worker(a)

    threads = [int(t) for t in a.threads.split(",")]
    with tempfile.TemporaryDirectory() as root:
        fp32, int8, int8enc, pt_size, n_params, t_export = export_dirs(a, root)
        configs = [("PyTorch fp32", "torch", ""), ("onnxruntime fp32", "onnx", fp32),
                   ("onnxruntime int8", "onnx", int8), ("ort int8-encoder", "onnx", int8enc)]
        results = {(name, t): [] for name, _, _ in configs for t in threads}
        for r in range(a.rounds):
            for name, kind, d in configs:
                for t in threads:
                    res = run_worker(a, kind, t, d)
                    results[(name, t)].append(res)
                    print(f"round {r + 1}: {name}, {t} thread(s): RTF {res['rtf']:.4f}, CPU RTF {res['cpu_rtf']:.4f}, "
                          f"peak {res['peak_mib']:.0f} MiB",
                          file=sys.stderr)
        sizes = {"PyTorch fp32": pt_size, "onnxruntime fp32": dir_size(fp32), "onnxruntime int8": dir_size(int8),
                 "ort int8-encoder": dir_size(int8enc)}
        print(f"{a.arch}: {n_params:.1f} M parameters, vocabulary {a.vocab}, {a.token_rate} fires/s; batch {a.batch} "
              f"of {0.7 * a.seconds:.1f}-{a.seconds:.1f} s, beam {a.beam}; median of {a.repeats} x {a.rounds} rounds; "
              f"export took {t_export:.0f} s")
        print(f"{'backend':<18}{'threads':>8}{'RTF':>9}{'vs PyTorch':>11}{'CPU RTF':>9}{'vs PyTorch':>11}"
              f"{'peak MiB':>10}{'model MB':>10}  same tokens as PyTorch")
        out = {"arch": a.arch, "params_m": n_params, "rows": [], "load_average": os.getloadavg()}
        for name, _, _ in configs:
            for t in threads:
                rs, base = results[(name, t)], results[("PyTorch fp32", t)]
                rtf, cpu_rtf = (statistics.median(r[k] for r in rs) for k in ("rtf", "cpu_rtf"))
                base_rtf, base_cpu = (statistics.median(r[k] for r in base) for k in ("rtf", "cpu_rtf"))
                ref = base[0]["tokens"]
                same = sum(x == y for x, y in zip(rs[0]["tokens"], ref))
                peak = max(r["peak_mib"] for r in rs)
                print(f"{name:<18}{t:>8}{rtf:>9.4f}{base_rtf / rtf:>10.2f}x{cpu_rtf:>9.4f}{base_cpu / cpu_rtf:>10.2f}x"
                      f"{peak:>10.0f}{sizes[name] / 1e6:>10.1f}  {same}/{len(ref)} utterances")
                out["rows"].append({"backend": name, "threads": t, "rtf": rtf, "speedup": base_rtf / rtf,
                                    "cpu_rtf": cpu_rtf, "cpu_speedup": base_cpu / cpu_rtf, "peak_mib": peak,
                                    "model_mb": sizes[name] / 1e6, "same_tokens": same, "utterances": len(ref),
                                    "torch_loaded": rs[0]["torch_loaded"]})
        print("RTF: wall seconds per audio second; CPU RTF: CPU seconds (all threads) per audio second, the "
              f"figure that load on a shared machine does not inflate (load average {os.getloadavg()[0]:.1f})")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
