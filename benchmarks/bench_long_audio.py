"""Long recordings: peak memory, real-time factor and WER of a long file vs its utterances one by one.

Usage:
    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_long_audio.py \\
        --minutes 60 --ckpt exp/demo-final/hkd/checkpoint_best.pt --manifest data/synth/test.tsv
    .venv/bin/python benchmarks/bench_long_audio.py --minutes 60 --arch cif_conformer_paper   # random weights
    .venv/bin/python benchmarks/bench_long_audio.py --minutes 10 --vad webrtc --noise-snr 10

1. The long file: the manifest's utterances in order (cycled until ``--minutes``), joined with
   silences drawn uniformly from ``--gap`` seconds (seeded), written as a 16-bit wav; optional white
   noise at ``--noise-snr`` dB over the whole file.
2. Each measurement runs in a fresh process (``--worker``): load the model, transcribe, report wall
   time (model loading excluded), peak resident memory (VmHWM, ``peak_memory.py``, the whole process: Python,
   torch, the model) and the hypotheses.
   - ``short``: the utterances as separate files (the manifest), batched, decoded as recorded
     (no silence trimmed, as fairseq-generate decodes them): the reference RTF and
     the one-by-one WER (each utterance scored against its transcript, summed edits / summed words);
   - ``long``: the long file: RTF, peak memory, and WER of the joined text against the joined
     transcripts of the utterances it contains.
3. ``--arch cif_conformer_paper``: the demo checkpoint's task with a random-weight model of that
   architecture (the CIF bias set for 3.2 tokens/s, </s> suppressed, as bench_decode.py does): memory
   and RTF only, its WER means nothing.
4. ``--edges speech`` (the segmenter's default: segments start ``--edge-pads`` before the speech onset
   and end after the offset) or ``vad`` (the detector's frames with ``--pad``, the segmenter before
   2026-12-05); ``--skip-short`` measures the long file alone (its WER still scored).
Printed: one JSON line per measurement and a Markdown table row for BENCHMARKS.md. ``--vad webrtc``
uses webrtcvad-wheels (not a requirement: ``pip install webrtcvad-wheels==2.0.14.post1``) instead of
Silero, for the comparison; ``--vad-only`` times the detectors alone and counts the pauses between
utterances each finds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from peak_memory import peak_rss_mib  # noqa: E402

sys.path.insert(0, str(REPO))
from fairseq_hkd.generation.segments import SegmenterConfig  # noqa: E402  (torch-free)


# ---------------------------------------------------------------------- the long file
def build_long_file(manifest: str, minutes: float, gap: tuple, snr: float, out: str, seed: int = 0) -> dict:
    """Write the long wav (streaming, one utterance at a time); return its utterance list and boundaries."""
    import soundfile as sf

    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.manifest import read_manifest

    entries = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    target = minutes * 60 * 16000
    n, used, bounds = 0, [], []
    with sf.SoundFile(out, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        k = 0
        while n < target:
            e = entries[k % len(entries)]
            wav = read_audio(e.audio)
            sil = np.zeros(int(rng.uniform(*gap) * 16000), dtype=np.float32)
            chunk = np.concatenate([wav, sil]) if n + len(wav) < target else wav
            if snr is not None:
                power = float(np.mean(wav ** 2))
                chunk = chunk + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(chunk)).astype(np.float32)
            f.write(np.clip(chunk, -1, 1))
            bounds.append((n, n + len(wav)))
            used.append(e.id)
            n += len(chunk)
            k += 1
    return {"path": out, "ids": used, "bounds": bounds, "seconds": n / 16000}


# ---------------------------------------------------------------------- worker (fresh process)
def segmenter_config(args):
    return SegmenterConfig(max_segment_s=args.max_segment, min_silence_s=args.min_silence, pad_start_s=args.pad[0],
                           pad_end_s=args.pad[1], edges=args.edges, edge_pads_s=tuple(args.edge_pads),
                           edge_min_range_db=args.edge_min_range_db)


def load_recognizer(args):
    import torch

    from fairseq_hkd.generation.transcribe import Recognizer

    torch.set_num_threads(args.threads)
    seg = segmenter_config(args)
    rec = Recognizer.from_checkpoint(args.ckpt, beam=args.beam, cpu=True, segmenter=seg, input_level=args.input_level,
                                     count_search=args.count_search)
    if args.arch != "checkpoint":
        from bench_decode import DEFAULT_RATE, build_model

        model = build_model(args.arch, len(rec.tgt_dict), DEFAULT_RATE.get(args.arch, 3.2))
        rec = Recognizer(model, rec.task, beam=args.beam, device="cpu", segmenter=seg, input_level=args.input_level,
                         count_search=args.count_search)
    if args.vad == "webrtc":
        rec._vad = WebrtcVad()
    return rec


class WebrtcVad:
    """webrtcvad-wheels as a SpeechDetector (30 ms frames, 0/1 'probabilities'), for the comparison."""

    frame_samples = 480

    def __init__(self, mode: int = 2):
        import webrtcvad

        self.vad = webrtcvad.Vad(mode)

    def reset(self):
        pass

    def __call__(self, frames):
        pcm = (np.clip(frames, -1, 1) * 32767).astype(np.int16)
        return np.array([float(self.vad.is_speech(f.tobytes(), 16000)) for f in pcm], dtype=np.float32)


def worker(args) -> None:
    from fairseq_hkd.generation.inputs import AudioItem
    from fairseq_hkd.data.manifest import read_manifest

    rec = load_recognizer(args)
    if args.worker == "short":  # the reference: the utterance files as recorded (as fairseq-generate decodes them)
        rec.segmenter = dataclasses.replace(rec.segmenter, trim_files=False)
        items = [AudioItem(e.id, e.audio, e.tgt_text) for e in read_manifest(args.manifest)]
    else:
        items = [AudioItem("long", args.long_file)]
    rec.transcribe(items[:1], batch_size=args.batch_size)  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    results = rec.transcribe(items, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    audio = sum(r.duration for r in results)
    print(json.dumps({
        "wall_s": wall, "audio_s": audio, "rtf": wall / audio,
        "peak_rss_mb": peak_rss_mib() * 1.048576,  # MiB -> MB
        "texts": [r.text for r in results], "refs": [r.reference for r in results],
        "segments": [[s.start, s.end] for r in results for s in r.segments],
    }))


def vad_only(args, long: dict) -> dict:
    """Read + detect + segment time alone; pauses between utterances with a cut in them (the cut's
    middle within 0.25 s of the pause); cuts elsewhere (inside an utterance)."""
    from fairseq_hkd.generation.audio_stream import AudioStream
    from fairseq_hkd.generation.segments import Segmenter
    from fairseq_hkd.generation.vad import SileroVad

    det = WebrtcVad() if args.vad == "webrtc" else SileroVad()
    seg = Segmenter(det, segmenter_config(args))
    spans = []
    t0 = time.perf_counter()
    for block in AudioStream(long["path"]).blocks():
        spans += seg.feed(block)
    spans += seg.finish()
    total = time.perf_counter() - t0
    cuts = [(spans[i][1], spans[i + 1][0]) for i in range(len(spans) - 1)]  # [end of one, start of the next)
    pauses = [(e, s2) for (_, e), (s2, _) in zip(long["bounds"][:-1], long["bounds"][1:])]
    tol = 4000  # 0.25 s: the utterances' own edge silence (TTS) is part of the pause
    mids = [(a + b) / 2 for a, b in cuts]
    in_pause = [any(e - tol <= m <= s2 + tol for e, s2 in pauses) for m in mids]
    found = sum(any(e - tol <= m <= s2 + tol for m in mids) for e, s2 in pauses)
    return {"vad": args.vad, "snr": args.noise_snr, "rtf": round(total / long["seconds"], 5),
            "segments": len(spans), "pauses": len(pauses), "pauses_cut": found,
            "cuts_outside_pauses": len(cuts) - sum(in_pause)}


# ---------------------------------------------------------------------- driver
def wer(refs, hyps) -> float:
    import editdistance

    err = sum(editdistance.eval(r.split(), h.split()) for r, h in zip(refs, hyps))
    return 100.0 * err / max(sum(len(r.split()) for r in refs), 1)


def run_worker(args, mode: str, long_file: str = "") -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--long-file", long_file]
    for k in ("ckpt", "manifest", "arch", "beam", "batch_size", "threads", "max_segment", "min_silence", "vad", "input_level",
              "count_search"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    cmd += ["--pad", *map(str, args.pad), "--edges", args.edges, "--edge-pads", *map(str, args.edge_pads),
            "--edge-min-range-db", str(args.edge_min_range_db)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--ckpt", default=str(REPO / "exp/demo-final/hkd/checkpoint_best.pt"))
    p.add_argument("--manifest", default=str(REPO / "data/synth/test.tsv"))
    p.add_argument("--arch", default="checkpoint", help="checkpoint, or a random-weight architecture")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-segment", type=float, default=20.0)
    p.add_argument("--min-silence", type=float, default=0.3)
    p.add_argument("--pad", type=float, nargs=2, default=(0.03, 0.25), help="seconds of audio kept before and after a segment")
    p.add_argument("--edges", choices=("speech", "vad"), default="speech", help="segment edges (SegmenterConfig.edges)")
    p.add_argument("--edge-pads", type=float, nargs=2, default=SegmenterConfig.edge_pads_s,
                   help="seconds before the onset, after the offset")
    p.add_argument("--edge-min-range-db", type=float, default=SegmenterConfig.edge_min_range_db,
                   help="speech edges only where the segment's loudest sub-frame is this far above the noise")
    p.add_argument("--gap", type=float, nargs=2, default=(0.3, 0.8), help="silence between utterances, seconds")
    p.add_argument("--noise-snr", type=float, default=None)
    p.add_argument("--input-level", default="auto", help="the transcriber's --input-level (auto: its default; off: as recorded)")
    p.add_argument("--count-search", type=int, default=1,
                   help="the transcriber's --count-search (1: its default; -1: the raw count, before 2026-12-03)")
    p.add_argument("--vad", choices=("silero", "webrtc"), default="silero")
    p.add_argument("--vad-only", action="store_true")
    p.add_argument("--skip-short", action="store_true")
    p.add_argument("--worker", choices=("short", "long"))
    p.add_argument("--long-file", default="")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        long = build_long_file(args.manifest, args.minutes, tuple(args.gap), args.noise_snr, os.path.join(tmp, "long.wav"))
        print(f"# long file: {long['seconds'] / 60:.1f} min, {len(long['ids'])} utterances", file=sys.stderr)
        if args.vad_only:
            print(json.dumps(vad_only(args, long)))
            return
        res = {"long": run_worker(args, "long", long["path"])}
        if not args.skip_short:
            res["short"] = run_worker(args, "short")
    row = {"minutes": round(long["seconds"] / 60, 1), "arch": args.arch, "beam": args.beam, "vad": args.vad,
           "pad": list(args.pad), "edges": args.edges, "edge_pads": list(args.edge_pads),
           "edge_min_range_db": args.edge_min_range_db, "input_level": args.input_level, "count_search": args.count_search,
           "snr": args.noise_snr, "long_rtf": round(res["long"]["rtf"], 4),
           "long_peak_rss_mb": round(res["long"]["peak_rss_mb"]), "segments": len(res["long"]["segments"])}
    from fairseq_hkd.data.manifest import read_manifest

    refs = [e.tgt_text for e in read_manifest(args.manifest)]
    order = {e.id: i for i, e in enumerate(read_manifest(args.manifest))}
    used = [order[i] for i in long["ids"]]  # manifest index of each utterance in the long file
    if "short" in res:
        s = res["short"]
        row["short_rtf"] = round(s["rtf"], 4)
        row["short_peak_rss_mb"] = round(s["peak_rss_mb"])
        row["rtf_ratio"] = round(res["long"]["rtf"] / s["rtf"], 2)
        row["wer_one_by_one"] = round(wer([refs[i] for i in used], [s["texts"][i] for i in used]), 2)
    row["wer_long"] = round(wer([" ".join(refs[i] for i in used)], res["long"]["texts"]), 2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
