"""Command-line options both transcribers share (PyTorch ``generation/transcribe.py`` and the
ONNX runtime's ``runtime/cli.py``): output format and destination, segmentation of long files,
input level.
Torch-free (stdlib only, plus the torch-free formats and segments modules)."""
import argparse

from fairseq_hkd.generation.formats import FORMATS
from fairseq_hkd.generation.segments import SegmenterConfig

__all__ = ["add_count_args", "add_level_arg", "add_output_args", "add_segmenter_args", "level_from_args", "segmenter_from_args"]


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--format, --output-dir, --output, --timestamps."""
    p.add_argument("--format", choices=FORMATS, default="tsv",
                   help="tsv: ID<TAB>TEXT[<TAB>SYMBOL:TIME ...]; text; json (per-token times and scores); "
                        "srt / vtt subtitles")
    p.add_argument("--output-dir", help="one output file per input, DIR/ID.EXT")
    p.add_argument("--output", help="write the stream to this file instead of stdout")
    p.add_argument("--timestamps", action="store_true", help="tsv: append SYMBOL:SECONDS for every emitted unit")


def add_count_args(p: argparse.ArgumentParser, default_from: str) -> None:
    """--count-search, --ctc-weight (None: the model's, ``default_from`` says where it comes from), --inner-eos."""
    p.add_argument("--count-search", type=int, default=None, metavar="R",
                   help="try CIF counts L-R..L+R, the weights scaled to each as in training, and keep the best by "
                        f"--ctc-weight; 0: scaled to L only; -1: the raw weights' count (default: {default_from})")
    p.add_argument("--ctc-weight", type=float, default=None, metavar="W",
                   help="a candidate count scores W * CTC + (1 - W) * decoder log-likelihood of its best hypothesis "
                        f"(default: {default_from})")
    p.add_argument("--inner-eos", choices=["auto", "yes", "no"], default="auto",
                   help="</s> may also be chosen inside a segment, as a sentence boundary dropped from the text "
                        "(auto: yes for a model trained with sentence joins, --join-prob > 0)")


def add_segmenter_args(p: argparse.ArgumentParser, vad_note: str = "") -> None:
    """--max-segment, --min-silence, --vad-threshold, --segment-edges, --edge-pads, --trim-files (defaults:
    SegmenterConfig's)."""
    seg = SegmenterConfig()
    p.add_argument("--max-segment", type=float, default=seg.max_segment_s,
                   help=f"longer files are split at pauses (Silero VAD{vad_note}) into segments of at most this "
                        "many seconds")
    p.add_argument("--min-silence", type=float, default=seg.min_silence_s,
                   help="seconds of non-speech that end a segment")
    p.add_argument("--vad-threshold", type=float, default=seg.threshold, help="speech probability threshold")
    p.add_argument("--segment-edges", choices=["speech", "vad"], default=seg.edges,
                   help="where a segment starts and ends: speech, --edge-pads around its speech onset and offset "
                        "(from the audio's level; in noise, the detector's edges); vad, the detector's frames")
    p.add_argument("--edge-pads", type=float, nargs=2, default=list(seg.edge_pads_s), metavar=("BEFORE", "AFTER"),
                   help="seconds before the speech onset and after the offset (those of the training utterances: "
                        "the defaults suit corpora whose files start at the first phoneme and end with ~0.35 s of "
                        "silence)")
    p.add_argument("--trim-files", action="store_true",
                   help="files decoded whole (up to --max-segment) lose the silence beyond --edge-pads before "
                        "their speech onset and after their offset (for a model trained on utterances cut at the "
                        "speech, like the demo's; default: as recorded, as fairseq-generate decodes them)")


def segmenter_from_args(args: argparse.Namespace) -> SegmenterConfig:
    """The segmenter of --max-segment / --min-silence / --vad-threshold / --segment-edges / --edge-pads /
    --trim-files; bad values exit with one line."""
    try:
        return SegmenterConfig(threshold=args.vad_threshold, min_silence_s=args.min_silence,
                               max_segment_s=args.max_segment,
                               pad_end_s=min(SegmenterConfig.pad_end_s, args.min_silence),
                               edges=args.segment_edges, edge_pads_s=tuple(args.edge_pads),
                               trim_files=args.trim_files)
    except AssertionError as e:
        raise SystemExit(f"--max-segment / --min-silence / --vad-threshold / --edge-pads: {e}")


def add_level_arg(p: argparse.ArgumentParser) -> None:
    """--input-level (data/level.py)."""
    p.add_argument("--input-level", default="auto", metavar="auto|off|NATS",
                   help="match each file's (or long-file segment's) speech level to the level the model was "
                        "trained at before decoding (auto), or to NATS, or decode it as recorded (off)")
    p.add_argument("--input-level-tolerance", type=float, default=None, metavar="DB",
                   help="levels within DB of the target are decoded as recorded, others are moved to the "
                        "nearer edge (default 0: every level is matched)")


def level_from_args(args: argparse.Namespace) -> str:
    """--input-level, checked (a bad value exits with one line)."""
    from fairseq_hkd.data.level import resolve_target

    try:
        resolve_target(args.input_level, "utterance")
    except ValueError as e:
        raise SystemExit(f"--input-level: {e}")
    if args.input_level_tolerance is not None and args.input_level_tolerance < 0:
        raise SystemExit(f"--input-level-tolerance must be >= 0 dB, got {args.input_level_tolerance:g}")
    return args.input_level
