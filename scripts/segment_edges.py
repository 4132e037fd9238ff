"""Where the long-file WER gap comes from: the segmenter's edges against the utterances' own.

Usage::

    OMP_NUM_THREADS=1 python scripts/segment_edges.py --path exp/wide/cif-s1/checkpoint_best.pt \\
        --manifest data/synth6k-wide/heldout.tsv --beam 10 [--variants files vad speech oracle-start oracle-end]
    python scripts/segment_edges.py --training-edges data/synth6k-wide/train.tsv

The manifest's utterances are joined once each, in order, with 0.3-0.8 s of silence (seeded, as
``benchmarks/bench_long_audio.py`` does) in memory; the transcriber's segmenter (Silero VAD) splits
the joined audio; every utterance is then decoded from spans of the joined audio cut several ways
(``--variants``):

- ``files``: the utterance files as recorded (what one-by-one decoding sees);
- ``vad``: the segmenter's spans with the detector's edges (``edges="vad"``, the transcriber before
  2026-12-05);
- ``speech``: the segmenter's spans with the speech edges (``edges="speech"``, its default since),
  for each ``--edge-pads`` (before, after; seconds; repeat for a sweep);
- ``oracle-start`` / ``oracle-end``: the segmenter's span with its start (end) replaced by the
  file's own, which tells which edge costs what;

``--training-edges MANIFEST`` prints instead how much silence the files of a (training) manifest
hold before their speech onset and after their offset, by the segmenter's rule (4-ms sub-frames
within 40 dB of the file's loudest and 10 dB above its 5th percentile): the ``--edge-pads`` that
give the transcriber's segments the edges the model was trained on. The demo corpus
(data/synth6k-wide/train.tsv, 300 files): before 7 ms on average (median 0, 90th percentile 16),
after 343 ms (median 335, 10th-90th percentile 252-451); the default pads are (0.01, 0.35) s.

Printed per variant: WER against the transcripts, transcripts equal to the files' decoding, and
the edges' offsets from the files' (start, end; ms: mean, 10th and 90th percentile). Only the
utterances alone in exactly one span are scored (their number is printed first; all 150 of heldout
and dev at the default ``--min-silence``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def joined_audio(manifest: str, gap=(0.3, 0.8), seed: int = 0):
    """-> (audio float32 [n], bounds [(start, end)] per utterance, entries)."""
    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.manifest import read_manifest

    entries = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    parts, bounds, n = [], [], 0
    for e in entries:
        wav = read_audio(e.audio)
        sil = np.zeros(int(rng.uniform(*gap) * 16000), dtype=np.float32)
        parts += [wav, sil]
        bounds.append((n, n + len(wav)))
        n += len(wav) + len(sil)
    x = np.clip(np.concatenate(parts), -1, 1)
    return (np.round(x * 32767) / 32767).astype(np.float32), bounds, entries  # as the 16-bit long file


def vad_spans(x: np.ndarray, cfg):
    """The segmenter's spans of ``x`` (fed in 4-s blocks, as a stream)."""
    from fairseq_hkd.generation.segments import Segmenter
    from fairseq_hkd.generation.vad import SileroVad

    seg = Segmenter(SileroVad(), cfg)
    spans = []
    for i in range(0, len(x), 16000 * 4):
        spans += seg.feed(x[i: i + 16000 * 4])
    return spans + seg.finish()


def file_edges(x: np.ndarray):
    """Seconds of audio before the speech onset and after the offset of one 16 kHz file (the
    segmenter's rule, ``segments.speech_extent``; (0, 0) in noise)."""
    from fairseq_hkd.generation.segments import SegmenterConfig, speech_extent

    edges = speech_extent(x, SegmenterConfig()) or (0, x.shape[0])
    return edges[0] / 16000, (x.shape[0] - edges[1]) / 16000


def training_edges(manifest: str, n: int = 300) -> None:
    from fairseq_hkd.data.audio import read_audio
    from fairseq_hkd.data.manifest import read_manifest

    entries = read_manifest(manifest)[:n]
    lead, trail = np.array([file_edges(read_audio(e.audio)) for e in entries]).T * 1000
    for name, v in (("before the onset", lead), ("after the offset", trail)):
        print(f"{manifest} ({len(entries)} files): {name} {v.mean():.0f} ms on average, percentiles 10 / 50 / 90: "
              f"{np.percentile(v, 10):.0f} / {np.percentile(v, 50):.0f} / {np.percentile(v, 90):.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path")
    p.add_argument("--manifest")
    p.add_argument("--training-edges", metavar="MANIFEST", help="only print the edges of this manifest's files")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-level", default="off")
    p.add_argument("--pad", type=float, nargs=2, default=(0.03, 0.25))
    p.add_argument("--variants", nargs="+", default=["files", "vad", "speech", "oracle-start", "oracle-end"])
    p.add_argument("--edge-pads", type=float, nargs=2, action="append", default=None,
                   help="(before, after) seconds around the speech onset / offset; repeat for a sweep")
    p.add_argument("--json", default="", help="write per-utterance texts here")
    args = p.parse_args()
    if args.training_edges:
        return training_edges(args.training_edges)
    if not (args.path and args.manifest):
        p.error("--path and --manifest are required (or --training-edges)")

    import editdistance
    import torch

    from fairseq_hkd.generation.inputs import AudioItem
    from fairseq_hkd.generation.pipeline import Piece
    from fairseq_hkd.generation.segments import SegmenterConfig
    from fairseq_hkd.generation.transcribe import Recognizer

    torch.set_num_threads(1)
    cfg = SegmenterConfig(pad_start_s=args.pad[0], pad_end_s=args.pad[1], edges="vad")
    rec = Recognizer.from_checkpoint(args.path, beam=args.beam, cpu=True, input_level=args.input_level, segmenter=cfg)
    x, bounds, entries = joined_audio(args.manifest)
    spans = vad_spans(x, cfg)
    sweep = [tuple(pp) for pp in args.edge_pads or [SegmenterConfig.edge_pads_s]]
    speech = {pp: vad_spans(x, SegmenterConfig(pad_start_s=args.pad[0], pad_end_s=args.pad[1], edge_pads_s=pp))
              for pp in (sweep if "speech" in args.variants else [])}
    assert all(len(v) == len(spans) for v in speech.values())  # the same segments, other edges
    # each utterance -> the spans overlapping it; each span -> the utterances it overlaps
    owner = []
    for a, b in bounds:
        owner.append([k for k, (s, e) in enumerate(spans) if s < b and e > a])
    clean = [len(o) == 1 and sum(1 for (a, b) in bounds if spans[o[0]][0] < b and spans[o[0]][1] > a) == 1 for o in owner]
    print(f"# {args.path} on {args.manifest}: {len(entries)} utterances, {len(spans)} spans, "
          f"{sum(clean)} utterances alone in exactly one span", flush=True)

    def decode(wavs):
        out = []
        for i in range(0, len(wavs), args.batch_size):
            chunk = wavs[i: i + args.batch_size]
            items = [AudioItem(str(k), "") for k in range(len(chunk))]
            pieces = [Piece(k, 0, 0, w, False) for k, w in enumerate(chunk)]
            out += [r.text for r in rec.decode_pieces(items, pieces)]
        return out

    idx = [u for u in range(len(entries)) if clean[u]]
    refs = [entries[u].tgt_text for u in idx]

    def cuts(variant, pads=None):
        out = []
        for u in idx:
            (a, b), (s, e) = bounds[u], spans[owner[u][0]]
            if variant == "files":
                s, e = a, b
            elif variant == "speech":
                s, e = speech[pads][owner[u][0]]
            elif variant == "oracle-start":
                s = a
            elif variant == "oracle-end":
                e = b
            out.append((s, e))
        return out

    base = None
    runs = [(v, None) for v in args.variants if v != "speech"]
    runs += [("speech", pp) for pp in speech]
    record = {}
    for v, pads in runs:
        se = cuts(v, pads)
        hyps = decode([x[s:e] for s, e in se])
        if v == "files":
            base = hyps
        err = sum(editdistance.eval(r.split(), h.split()) for r, h in zip(refs, hyps))
        words = sum(len(r.split()) for r in refs)
        ds = np.array([(s - bounds[u][0]) / 16 for (s, _), u in zip(se, idx)])
        de = np.array([(e - bounds[u][1]) / 16 for (_, e), u in zip(se, idx)])
        same = sum(h == b for h, b in zip(hyps, base)) if base is not None else -1
        name = v + (f" {pads[0]:g},{pads[1]:g}" if pads else "")
        print(f"{name:<18} WER {100 * err / words:6.2f}  same as files {same}/{len(idx)}  "
              f"start {ds.mean():+6.1f} ms [{np.percentile(ds, 10):+.0f}, {np.percentile(ds, 90):+.0f}]  "
              f"end {de.mean():+6.1f} ms [{np.percentile(de, 10):+.0f}, {np.percentile(de, 90):+.0f}]", flush=True)
        record[name] = hyps
    if args.json:
        Path(args.json).write_text(json.dumps({"ids": [entries[u].id for u in idx], "refs": refs, **record}))


if __name__ == "__main__":
    main()
