"""Word times against the synthesizer's own: how far a word's start and end, as the recognizer reports them,
are from where espeak-ng put the word.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_word_times.py \\
        --ckpt exp/head/cif-s2/checkpoint_best.pt --data data/synth6k-wide-r2 --splits dev test

Reference times: each utterance of the synthesized corpus (``utterances.tsv``: text, voice, speed, pitch) is
synthesized again through libespeak-ng's C API, whose synth callback reports a word event at the sample where
each word begins; its samples equal the corpus file's (espeak-ng's command line writes the same samples, then
trailing silence, up to the engine's own variation of a few samples from run to run; the durations are checked
per utterance). A word's reference start is the first 4-ms sub-frame within ``--db`` dB of the utterance's
loudest at or after its event, its end the last such sub-frame before the next event (so pauses belong to
neither word). Words that espeak-ng voices together with the word before them (no event of their own: "there
were", "what is") are not scored.

Recognizer times: the utterance decoded whole (``Recognizer``, beam ``--beam``, the count search as the
checkpoint says); only utterances decoded without error are scored, word k against word k. Methods:
``fire`` is the token time of ``--timestamps`` before 2026-12-06 (start = end = the centre of the frame whose
weight completed the word's first / last token), ``span F`` the spans of ``generation/token_spans.py`` with
``floor`` F. Prints, per split and method, the mean and median absolute start and end errors (ms), the mean
signed errors, the share within 100 ms and the end errors of the utterances' last words, and a Markdown table.
Then how well a word's probability (``probability`` in the JSON output: the product of its tokens'
probabilities under the search) tells wrong words from right ones, over every decoded word: a word is right
when a Levenshtein alignment with the reference matches it to an equal word; the AUC is the chance that a
right word has the higher probability than a wrong one. Choose F on dev, report test.
"""
from __future__ import annotations

import argparse
import ctypes
import csv
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Espeak:
    """libespeak-ng in synchronous mode: text -> (int16 samples, rate, [(1-based character position of a word,
    its first sample)])."""

    class Event(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                    ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                    ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]

    WORD, LIST_END, RATE, PITCH = 1, 0, 1, 3

    def __init__(self, lib: str = "libespeak-ng.so.1"):
        self.lib = ctypes.CDLL(lib)
        self.rate = self.lib.espeak_Initialize(2, 500, None, 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if self.rate <= 0:
            raise RuntimeError(f"{lib}: espeak_Initialize failed")
        self.chunks, self.words = [], []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                    ctypes.POINTER(self.Event))
        self._callback = callback(self._on_audio)  # kept: the library holds a pointer to it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n, events):
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != self.LIST_END:
            if events[i].type == self.WORD:
                self.words.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def synth(self, text: str, voice: str, speed: int, pitch: int):
        self.chunks, self.words = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(self.RATE, int(speed), 0)
        self.lib.espeak_SetParameter(self.PITCH, int(pitch), 0)
        b = text.encode() + b"\0"
        self.lib.espeak_Synth(b, len(b), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_AUTO
        self.lib.espeak_Synchronize()
        wav = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return wav, self.rate, list(self.words)


def reference_words(text: str, wav: np.ndarray, rate: int, events, db: float, sub_s: float = 0.004):
    """Word events [(1-based character position, first sample)] -> one (start s, end s) per word of ``text``:
    the loud sub-frames from its event to the next event; None for a word espeak-ng voiced together with
    the one before it (no event of its own) or without a loud sub-frame."""
    sub = max(1, int(round(sub_s * rate)))
    n = wav.shape[0] // sub
    x = wav[: n * sub].astype(np.float64)
    level = 10 * np.log10(np.mean(x.reshape(n, sub) ** 2, axis=1) + 1e-10)
    loud = level >= level.max() - db
    at = {pos: sample for pos, sample in events}
    starts, pos = [], 1
    for word in text.split(" "):
        starts.append(at.get(pos))
        pos += len(word) + 1
    bounds = sorted(at.values()) + [n * sub]
    out = []
    for a in starts:
        if a is None:
            out.append(None)
            continue
        b = min([x for x in bounds if x > a], default=n * sub)
        idx = np.nonzero(loud[a // sub: max(a // sub + 1, b // sub)])[0]
        out.append(None if idx.size == 0 else ((a // sub + idx[0]) * sub / rate, (a // sub + idx[-1] + 1) * sub / rate))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--splits", nargs="+", default=["dev", "test"])
    p.add_argument("--floors", nargs="+", type=float, default=[0.0, 0.02, 0.05, 0.1, 0.2])
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--db", type=float, default=35.0, help="reference words: sub-frames within this of the loudest")
    p.add_argument("--max-utts", type=int, default=0)
    args = p.parse_args(argv)

    import soundfile as sf
    import torch
    from tqdm import tqdm

    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.plot import encoder_frame_centres
    from fairseq_hkd.generation.results import word_spans
    from fairseq_hkd.generation.token_spans import token_spans
    from fairseq_hkd.generation.transcribe import Recognizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rec = Recognizer.from_checkpoint(args.ckpt, data=args.data, beam=args.beam, cpu=True, input_level="off")
    units, tgt_dict, ds = rec.task.units, rec.tgt_dict, rec.downsample
    espeak = Espeak()
    with open(os.path.join(args.data, "utterances.tsv"), newline="", encoding="utf-8") as f:
        synth = {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}
    methods = ["fire"] + [f"span {x:g}" for x in args.floors]
    rows, conf_rows = [], []
    for split in args.splits:
        entries = read_manifest(os.path.join(args.data, f"{split}.tsv"))
        if args.max_utts:
            entries = entries[: args.max_utts]
        err = {m: ([], [], []) for m in methods}  # start, end errors of every word; end errors of last words
        confidence = []  # (word probability, word right) of every decoded word
        scored = mismatched = wrong = 0
        for e in tqdm(entries, desc=split, unit="utt"):
            s = synth[e.id]
            wav, rate, events = espeak.synth(s["text"], s["voice"], int(s["speed"]), int(s["pitch"]))
            if abs(wav.shape[0] / rate - sf.info(e.audio).duration) > 0.6:  # read_manifest resolved the path
                mismatched += 1  # the command line adds ~0.3 s of silence; anything else is another utterance
                continue
            ref = reference_words(s["text"], wav, rate, events, args.db)
            audio, _ = sf.read(e.audio, dtype="float32")
            feats = torch.from_numpy(rec.features(audio))[None]
            with torch.no_grad():
                dec = rec.generator.decode(feats, torch.tensor([feats.shape[1]]))
            hyp = dec.hypos[0][0]
            tokens = hyp["tokens"].tolist()
            strip = {tgt_dict.eos(), tgt_dict.bos(), tgt_dict.pad()}
            keep = [k for k, t in enumerate(tokens) if t not in strip]
            symbols = [tgt_dict[tokens[k]] for k in keep]
            spans = word_spans(symbols, units.unit)
            scores = hyp["positional_scores"].double().numpy()
            hyp_words = [units.decode(symbols[a:b]) for a, b in spans]
            for ok, (a, b) in zip(correct_words(hyp_words, units.normalise(e.tgt_text).split()), spans):
                confidence.append((float(np.exp(scores[[keep[i] for i in range(a, b)]].sum())), ok))
            if units.decode(symbols).split() != units.normalise(e.tgt_text).split() or len(spans) != len(ref):
                wrong += 1
                continue
            scored += 1
            fires = hyp["fires"].numpy()
            n_enc = int(dec.encoder_lengths[0])
            alpha = dec.alpha[0, :n_enc].double().numpy()
            fire_t = encoder_frame_centres(fires[keep], ds)
            for m in methods:
                if m == "fire":
                    st, en = fire_t, fire_t
                else:
                    a, b = token_spans(alpha, len(fires), ds, floor=float(m.split()[1]))
                    st, en = a[keep], b[keep]
                for w, ((a_tok, b_tok), r) in enumerate(zip(spans, ref)):
                    if r is None:
                        continue
                    err[m][0].append(st[a_tok] - r[0])
                    err[m][1].append(en[b_tok - 1] - r[1])
                    if w == len(ref) - 1:
                        err[m][2].append(en[b_tok - 1] - r[1])
        for m in methods:
            ds_, de, dl = (np.array(x) * 1000 for x in err[m])
            row = dict(split=split, method=m, words=len(ds_), utts=scored,
                       start_mae=np.mean(np.abs(ds_)), start_med=np.median(np.abs(ds_)), start_bias=np.mean(ds_),
                       start_100=100 * np.mean(np.abs(ds_) <= 100), end_mae=np.mean(np.abs(de)),
                       end_med=np.median(np.abs(de)), end_bias=np.mean(de), end_100=100 * np.mean(np.abs(de) <= 100),
                       last_end_mae=np.mean(np.abs(dl)), last_end_bias=np.mean(dl))
            rows.append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        p_word, right = np.array([c for c, _ in confidence]), np.array([ok for _, ok in confidence])
        low = p_word < 0.5
        conf_rows.append(dict(split=split, words=len(right), wrong=100 * np.mean(~right), auc=auc(p_word[~right], p_word[right]),
                              low=100 * np.mean(low), wrong_low=100 * np.mean(~right[low]) if low.any() else float("nan"),
                              wrong_high=100 * np.mean(~right[~low])))
        print(f"{split}: {scored} utterances scored, {wrong} decoded with errors (not scored), {mismatched} whose "
              f"resynthesis did not match the corpus's duration", flush=True)
    print("\n| split | method | words | start: mean / median abs. error ms, bias ms, <= 100 ms | end: the same | "
          "end of an utterance's last word: mean abs. error, bias ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {r['method']} | {r['words']} | {r['start_mae']:.0f} / {r['start_med']:.0f}, "
              f"{r['start_bias']:+.0f}, {r['start_100']:.1f} % | {r['end_mae']:.0f} / {r['end_med']:.0f}, "
              f"{r['end_bias']:+.0f}, {r['end_100']:.1f} % | {r['last_end_mae']:.0f}, {r['last_end_bias']:+.0f} |")

    print("\n| split | decoded words | wrong | AUC of the word probability (wrong below right) | words with p < 0.5 | "
          "wrong among them | wrong among the others |")
    print("|---|---|---|---|---|---|---|")
    for r in conf_rows:
        print(f"| {r['split']} | {r['words']} | {r['wrong']:.1f} % | {r['auc']:.3f} | {r['low']:.1f} % | "
              f"{r['wrong_low']:.1f} % | {r['wrong_high']:.1f} % |")


def correct_words(hyp, ref):
    """[bool] per hypothesis word: matched to an equal reference word on a Levenshtein alignment."""
    n, m = len(hyp), len(ref)
    d = np.zeros((n + 1, m + 1), dtype=np.int64)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (hyp[i - 1] != ref[j - 1]))
    ok, i, j = [False] * n, n, m
    while i > 0 and j > 0:
        if d[i, j] == d[i - 1, j - 1] + (hyp[i - 1] != ref[j - 1]):
            ok[i - 1] = hyp[i - 1] == ref[j - 1]
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return ok


def auc(negatives, positives) -> float:
    """P(a random positive scores above a random negative), ties counted half (Mann-Whitney)."""
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    neg, pos = np.asarray(negatives)[:, None], np.asarray(positives)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


if __name__ == "__main__":
    main()
