"""Transcribe audio files with a trained CIF checkpoint (console script and Python API).

Usage::

    fairseq-hkd-transcribe --path exp/checkpoint_avg10.pt a.wav b.flac
    fairseq-hkd-transcribe --path ckpt.pt --manifest data/test.tsv --beam 10 --batch-size 16 \\
        --timestamps --plot plots/ --output test.hyp.tsv

One line per file, in input order: ``ID<TAB>TEXT``; with ``--timestamps`` a third field lists
every emitted unit with its time in seconds, ``SYMBOL:TIME`` separated by spaces (split on the
last colon). A unit's time is the centre of the encoder frame whose CIF weight completed it
(encoder frame = model downsampling x 10 ms fbank shift; the first fbank frame is centred at
12.5 ms), clipped to the audio's duration. IDs are the manifest ids, or the file names without
extension. With a manifest the summary line also reports WER/CER against its transcripts, normalised
as the units normalise text (``Units.normalise``: for WordPiece the tokenizer's lower-casing and accent
stripping), the references fairseq-generate scores (same WER on the same checkpoint and data; see
data/units.py for unknown units and data/wordpiece_join.py for the few WordPiece spellings that differ).
Only INFO lines of this package reach the console (matplotlib/PIL DEBUG chatter is silenced).

The checkpoint's task config names its data directory (``dict.txt``, ``cmvn.npz`` for global CMVN,
the tokenizer or sentencepiece model): pass ``--data DIR`` when it has moved.

Python::

    from fairseq_hkd.generation.transcribe import Recognizer
    rec = Recognizer.from_checkpoint("ckpt.pt", beam=10)
    for t in rec.transcribe(["a.wav", "b.flac"], timestamps=True):
        print(t.utt_id, t.text, t.token_times)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["Recognizer", "Transcript", "AudioItem", "cli_main"]

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
CHUNK_BATCHES = 16  # files are read and length-sorted this many batches at a time


@dataclass(frozen=True)
class AudioItem:
    utt_id: str
    audio: str
    reference: Optional[str] = None


@dataclass
class Transcript:
    """One file's result.

    symbols: emitted unit symbols (without </s>); token_times: seconds per symbol (with
    ``timestamps``); n_fires: CIF tokens (fires + tail), the number of decoder steps;
    reference: the manifest transcript as scored (``Units.normalise``), None without one.
    """

    utt_id: str
    audio: str
    text: str
    symbols: List[str]
    score: float
    duration: float
    n_fires: int
    token_times: Optional[List[float]] = None
    reference: Optional[str] = None
    plot: Optional[str] = None

    def line(self) -> str:
        fields = [self.utt_id, self.text]
        if self.token_times is not None:
            fields.append(" ".join(f"{s}:{t:.2f}" for s, t in zip(self.symbols, self.token_times)))
        return "\t".join(fields)


class Recognizer:
    """A loaded CIF model + its task (dictionary, units, feature settings) + a CIF generator."""

    def __init__(self, model, task, beam: int = 10, device: Union[str, torch.device] = "cpu", lm_model=None,
                 lm_weight: float = 0.0):
        """lm_model, lm_weight: shallow fusion with a fairseq LM over the same dictionary (lm_fusion.py)."""
        from fairseq_hkd.data.cmvn import build_cmvn
        from fairseq_hkd.generation.cif_generator import CifGenerator

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.tgt_dict = task.target_dictionary
        lm_model = lm_model.to(self.device).eval() if lm_model is not None else None
        self.generator = CifGenerator([self.model], self.tgt_dict, beam_size=beam, nbest=1, lm_model=lm_model,
                                      lm_weight=lm_weight)
        cfg = task.cfg
        self.cmvn = build_cmvn(cfg.cmvn, cfg.cmvn_stats or os.path.join(cfg.data, "cmvn.npz"))
        self.downsample = int(model.encoder.downsample)

    @classmethod
    def from_checkpoint(cls, path: str, data: Optional[str] = None, beam: int = 10, cpu: bool = False,
                        model_overrides: Optional[dict] = None, lm_path: Optional[str] = None,
                        lm_weight: float = 0.0) -> "Recognizer":
        """Load ``path`` with fairseq's checkpoint_utils. ``data``: the data directory with dict.txt
        (default: the one the checkpoint was trained on); ``model_overrides``: e.g.
        ``{"cif_tail_threshold": 0.4}``; ``lm_path``, ``lm_weight``: shallow fusion as
        ``fairseq-generate --lm-path --lm-weight`` (an LM of other units: ``LmDictionaryError``)."""
        from fairseq import checkpoint_utils

        import fairseq_hkd  # noqa: F401  (registers the task and model; compat shims for torch.load)

        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} not found")
        overrides = dict(model_overrides or {})
        if data is not None:
            overrides["data"] = data
        state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides)
        task_cfg = state["cfg"]["task"]
        data_dir = task_cfg.get("data", None)
        if getattr(task_cfg, "_name", None) != "cif_asr":
            raise ValueError(f"{path} was trained with task {task_cfg.get('_name')!r}, not cif_asr")
        dict_path = task_cfg.get("dict_path", None) or os.path.join(data_dir or "", "dict.txt")
        if not data_dir or not os.path.isdir(data_dir) or not os.path.isfile(dict_path):
            raise FileNotFoundError(
                f"{path} was trained on data directory {data_dir!r}, which is missing or has no {dict_path} here; "
                "pass --data DIR "
                "(a directory with the training dict.txt, and cmvn.npz if the model uses global CMVN)"
            )
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, state=state)
        device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
        lm_model = None
        if lm_path:
            from fairseq_hkd.generation.lm_fusion import load_lm

            lm_model = load_lm(lm_path, task.units.dict_path, task.target_dictionary)
            if lm_weight == 0.0:
                logger.warning(f"--lm-path {lm_path} with --lm-weight 0: the language model is not used")
        return cls(models[0], task, beam=beam, device=device, lm_model=lm_model, lm_weight=lm_weight)

    # ------------------------------------------------------------------ features
    def features(self, wav: np.ndarray) -> np.ndarray:
        """Mono 16 kHz float32 [n] -> normalised fbank [T, 80], as the task computes it."""
        from fairseq_hkd.data.fbank import fbank

        return np.ascontiguousarray(self.cmvn(fbank(wav)), dtype=np.float32)

    def read(self, item: AudioItem) -> Tuple[np.ndarray, float]:
        from fairseq_hkd.data.audio import SAMPLE_RATE, read_audio

        cfg = self.task.cfg
        wav = read_audio(item.audio, where=item.utt_id, strict_sample_rate=cfg.strict_sample_rate,
                         multichannel=cfg.multichannel)
        feats = self.features(wav)
        if feats.shape[0] < cfg.min_source_frames:
            raise ValueError(f"{item.audio}: {len(wav) / SAMPLE_RATE:.3f} s of audio gives {feats.shape[0]} fbank "
                             f"frames, fewer than the model's minimum {cfg.min_source_frames}")
        return feats, len(wav) / SAMPLE_RATE

    # ------------------------------------------------------------------ decoding
    def transcribe(self, items: Iterable[Union[str, AudioItem]], batch_size: int = 8, timestamps: bool = False,
                   plot_dir: Optional[str] = None, progress: bool = False) -> List[Transcript]:
        """Transcribe files (paths or AudioItems); results in input order."""
        return list(self.iter_transcribe(items, batch_size, timestamps, plot_dir, progress))

    def iter_transcribe(self, items: Iterable[Union[str, AudioItem]], batch_size: int = 8, timestamps: bool = False,
                        plot_dir: Optional[str] = None, progress: bool = False) -> Iterator[Transcript]:
        """Like :meth:`transcribe`, yielding results (in input order) as chunks finish."""
        items = [it if isinstance(it, AudioItem) else AudioItem(_file_id(it), it) for it in items]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="file", file=sys.stderr)
        chunk = batch_size * CHUNK_BATCHES
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            loaded = [self.read(it) for it in part]
            order = sorted(range(len(part)), key=lambda i: -loaded[i][0].shape[0])
            results: List[Optional[Transcript]] = [None] * len(part)
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                out = self._decode_batch([part[i] for i in idx], [loaded[i] for i in idx], timestamps, plot_dir)
                for i, r in zip(idx, out):
                    results[i] = r
                if bar is not None:
                    bar.update(len(idx))
            yield from results
        if bar is not None:
            bar.close()

    @torch.no_grad()
    def _decode_batch(self, items: Sequence[AudioItem], loaded, timestamps: bool, plot_dir: Optional[str]):
        feats = [torch.from_numpy(f) for f, _ in loaded]
        lengths = torch.tensor([f.size(0) for f in feats], dtype=torch.long)
        src = feats[0].new_zeros(len(feats), int(lengths.max()), feats[0].size(1))
        for b, f in enumerate(feats):
            src[b, : f.size(0)] = f
        dec = self.generator.decode(src.to(self.device), lengths.to(self.device))
        alpha, enc_len = dec.alpha.float().cpu(), dec.encoder_lengths.cpu()
        strip = {self.tgt_dict.eos(), self.tgt_dict.bos(), self.tgt_dict.pad()}
        out = []
        for b, item in enumerate(items):
            hyp = dec.hypos[b][0]
            symbols = [self.tgt_dict[int(t)] for t in hyp["tokens"] if int(t) not in strip]
            duration = loaded[b][1]
            fires = hyp["fires"]
            ref = None if item.reference is None else self.task.units.normalise(item.reference)
            t = Transcript(item.utt_id, item.audio, self.task.units.decode(symbols), symbols, float(hyp["score"]),
                           duration, int(dec.cif_lengths[b]), reference=ref)
            if timestamps:
                t.token_times = self.fire_times(fires[: len(symbols)], duration)
            if plot_dir is not None:
                from fairseq_hkd.generation.plot import plot_alignment

                t.plot = plot_alignment(
                    os.path.join(plot_dir, _safe_name(item.utt_id) + ".png"), loaded[b][0], alpha[b, : enc_len[b]],
                    fires, symbols + (["</s>"] if len(symbols) < len(fires) else []), self.downsample,
                    title=f"{item.utt_id}: {t.text}")
            out.append(t)
        return out

    def fire_times(self, fires: torch.Tensor, duration: float) -> List[float]:
        """Encoder frame indices -> seconds (frame centres, clipped to [0, duration])."""
        from fairseq_hkd.generation.plot import encoder_frame_centres

        return [min(max(float(x), 0.0), duration) for x in encoder_frame_centres(fires.numpy(), self.downsample)]


def _file_id(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _safe_name(utt_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in utt_id)


def error_rates(results: Sequence[Transcript]) -> Optional[dict]:
    """WER / CER (%) of results that have a reference (editdistance over words / characters; as in
    fairseq's ``--wer-char-level`` a space between words counts as a character)."""
    import editdistance

    pairs = [(r.reference, r.text) for r in results if r.reference is not None]
    if not pairs:
        return None
    w_err = sum(editdistance.eval(ref.split(), hyp.split()) for ref, hyp in pairs)
    w_n = sum(len(ref.split()) for ref, _ in pairs)
    c_err = sum(editdistance.eval(list(" ".join(ref.split())), list(" ".join(hyp.split()))) for ref, hyp in pairs)
    c_n = sum(len(" ".join(ref.split())) for ref, _ in pairs)
    return {"wer": 100.0 * w_err / max(w_n, 1), "cer": 100.0 * c_err / max(c_n, 1), "utterances": len(pairs)}


def read_inputs(audio: Sequence[str], manifest: Optional[str]) -> List[AudioItem]:
    items = []
    if manifest:
        from fairseq_hkd.data.manifest import read_manifest

        items += [AudioItem(e.id, e.audio, e.tgt_text) for e in read_manifest(manifest)]
    for path in audio:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"audio file {path} not found")
        items.append(AudioItem(_file_id(path), path))
    seen = set()
    for it in items:
        if it.utt_id in seen:
            raise ValueError(f"two inputs share the id {it.utt_id!r} ({it.audio}); rename one of the files")
        seen.add(it.utt_id)
    return items


def build_parser(require_plot: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-hkd-plot" if require_plot else "fairseq-hkd-transcribe",
        description="Transcribe wav/flac files or a manifest with a CIF checkpoint"
        + (" and draw alignment plots" if require_plot else ""),
    )
    p.add_argument("audio", nargs="*", help="audio files (wav, flac, anything libsndfile reads)")
    p.add_argument("--path", required=True, help="checkpoint (.pt)")
    p.add_argument("--manifest", help="a manifest TSV (id, audio, n_samples, tgt_text); its transcripts are scored")
    p.add_argument("--data", help="data directory with dict.txt (default: the checkpoint's)")
    p.add_argument("--beam", type=int, default=10, help="beam size (1 = greedy)")
    p.add_argument("--lm-path", help="language model checkpoint for shallow fusion (fairseq transformer_lm on the "
                                     "ASR units, examples/*/lm.sh)")
    p.add_argument("--lm-weight", type=float, default=0.0,
                   help="weight W of the LM log-probabilities, as fairseq-generate's (0: no LM)")
    p.add_argument("--batch-size", type=int, default=8, help="files per decoding batch")
    p.add_argument("--timestamps", action="store_true", help="append SYMBOL:SECONDS for every emitted unit")
    p.add_argument("--plot", metavar="DIR", required=require_plot, help="write one alignment PNG per file to DIR")
    p.add_argument("--max-files", type=int, help="only the first N inputs")
    p.add_argument("--output", help="write the lines to this file instead of stdout")
    p.add_argument("--model-overrides", default="{}", help='JSON, e.g. \'{"cif_tail_threshold": 0.4}\'')
    p.add_argument("--cpu", action="store_true", help="decode on CPU even when CUDA is available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def setup_logging() -> None:
    """INFO to stderr in our format. Importing fairseq_hkd (fairseq's models) already ran
    ``logging.basicConfig(level=DEBUG)``: root goes back to INFO, its plain stream handlers get our
    format (other handlers, e.g. pytest's, are left alone), matplotlib/PIL are held at WARNING."""
    from fairseq_hkd.generation.plot import quiet_plot_loggers

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for h in root.handlers:
        if type(h) is logging.StreamHandler:
            h.setFormatter(logging.Formatter(LOG_FORMAT))
    root.setLevel(logging.INFO)
    quiet_plot_loggers()


def cli_main(argv: Optional[Sequence[str]] = None, require_plot: bool = False) -> None:
    args = build_parser(require_plot).parse_args(argv)
    setup_logging()
    items = read_inputs(args.audio, args.manifest)
    if not items:
        raise SystemExit("nothing to transcribe: give audio files and/or --manifest")
    if args.max_files:
        items = items[: args.max_files]
    try:
        overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--model-overrides must be JSON ({e}): {args.model_overrides!r}")
    rec = Recognizer.from_checkpoint(args.path, data=args.data, beam=args.beam, cpu=args.cpu,
                                     model_overrides=overrides, lm_path=args.lm_path, lm_weight=args.lm_weight)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    t0 = time.perf_counter()
    results = []
    try:
        for r in rec.iter_transcribe(items, args.batch_size, args.timestamps, args.plot, progress=not args.quiet):
            print(r.line(), file=out, flush=True)
            results.append(r)
    finally:
        if args.output:
            out.close()
    elapsed = time.perf_counter() - t0
    audio_s = sum(r.duration for r in results)
    summary = (f"transcribed {len(results)} files ({audio_s:.1f} s of audio) in {elapsed:.1f} s, "
               f"real-time factor {elapsed / max(audio_s, 1e-9):.3f}, beam {args.beam}, {rec.device}")
    if args.lm_path:
        summary += f", LM {args.lm_path} weight {args.lm_weight}"
    rates = error_rates(results)
    if rates:
        summary += f"; WER {rates['wer']:.2f}% CER {rates['cer']:.2f}% over {rates['utterances']} references"
    if args.plot:
        summary += f"; plots in {args.plot}"
    logger.info(summary)


if __name__ == "__main__":
    cli_main()
