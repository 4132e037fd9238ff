"""A tiny synthesized speech corpus for tests: ready-to-train data directories in seconds.

``make_tiny_corpus(out_dir)`` writes::

    out_dir/wav/*.wav        16 kHz mono 16-bit speech (espeak-ng + sox), or, when those are missing,
                             a deterministic tone sequence per transcript (one tone per character)
    out_dir/train.tsv        manifests: id, audio, n_samples, tgt_text, speaker
    out_dir/valid.tsv
    out_dir/dict.txt         unit dictionary of all train + valid symbols (fairseq format)
    out_dir/spm.model        (unit="spm" only) a sentencepiece model trained on the transcripts

Transcripts are random word sequences from a small fixed vocabulary (seeded), so the same
arguments always give the same corpus.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf

from fairseq_hkd.data.manifest import write_manifest
from fairseq_hkd.data.units import Units

SR = 16000
WORDS = ("the", "cat", "dog", "sat", "ran", "on", "mat", "red", "big", "sun", "a", "hat", "fox", "box", "in", "up")
VOICES = ("en-us", "en-us+f3", "en-gb+m3", "en-us+m5")


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def _random_texts(n: int, rng: np.random.Generator, min_words: int, max_words: int, words: Sequence[str]):
    texts = []
    for _ in range(n):
        k = int(rng.integers(min_words, max_words + 1))
        texts.append(" ".join(words[int(i)] for i in rng.integers(0, len(words), size=k)))
    return texts


def synth_espeak(text: str, path: Path, voice: str, speed: int) -> None:
    """espeak-ng speech at 16 kHz mono int16 (sox resamples when present, else scipy)."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", tmp.name, text],
                       check=True, capture_output=True)
        if shutil.which("sox"):
            # -D: no dither (sox's dither is randomly seeded, so the files, and every model trained
            # on them, would differ from run to run; fairseq_hkd/prepare/synth.py does the same)
            subprocess.run(["sox", "-D", tmp.name, "-r", str(SR), "-c", "1", "-b", "16", str(path)],
                           check=True, capture_output=True)
        else:
            from fairseq_hkd.data.audio import resample

            wav, sr = sf.read(tmp.name, dtype="float32")
            sf.write(path, resample(wav, sr, SR), SR, subtype="PCM_16")


def synth_tones(text: str, path: Path, seed: int) -> None:
    """Deterministic fallback: 90 ms per character, a sine whose pitch encodes the character,
    20 ms gaps, a little seeded noise; 100 ms of silence around the utterance."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.09 * SR)) / SR
    gap = np.zeros(int(0.02 * SR))
    parts = [np.zeros(int(0.1 * SR))]
    for c in text:
        if c == " ":
            parts.append(np.zeros(int(0.06 * SR)))
            continue
        f = 200.0 + 55.0 * (ord(c) % 64)
        parts += [0.3 * np.sin(2 * np.pi * f * t) * np.hanning(len(t)), gap]
    parts.append(np.zeros(int(0.1 * SR)))
    wav = np.concatenate(parts)
    wav += 0.003 * rng.standard_normal(len(wav))
    sf.write(path, wav.astype(np.float32), SR, subtype="PCM_16")


def write_dict(path: Path, symbol_lists: Sequence[Sequence[str]]) -> None:
    """fairseq dict.txt (``symbol count``), most frequent first, ties by symbol."""
    counts = Counter(s for syms in symbol_lists for s in syms)
    with open(path, "w", encoding="utf-8") as f:
        for sym, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            f.write(f"{sym} {c}\n")


def make_tiny_corpus(
    out_dir,
    n_train: int = 8,
    n_valid: int = 4,
    unit: str = "char",
    seed: int = 0,
    synth: str = "auto",
    min_words: int = 2,
    max_words: int = 4,
    words: Sequence[str] = WORDS,
    tokenizer_dir: Optional[str] = None,
    spm_vocab_size: int = 24,
) -> Path:
    """Write a ready-to-train data directory (see the module docstring) and return its path.

    Args:
        unit: ``char`` | ``wordpiece`` (needs ``tokenizer_dir``) | ``spm`` (trains ``spm.model``).
        synth: ``auto`` (espeak-ng when installed, else tones) | ``espeak`` | ``tones``.
    """
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    use_espeak = synth == "espeak" or (synth == "auto" and have_espeak())
    splits = {"train": n_train, "valid": n_valid}
    texts = {s: _random_texts(n, rng, min_words, max_words, words) for s, n in splits.items()}
    rows = {}
    for split, n in splits.items():
        rows[split] = []
        for i, text in enumerate(texts[split]):
            uid = f"{split}{i:04d}"
            wav_path = out / "wav" / f"{uid}.wav"
            voice = VOICES[i % len(VOICES)]
            if use_espeak:
                synth_espeak(text, wav_path, voice, speed=int(150 + 20 * (i % 3)))
            else:
                synth_tones(text, wav_path, seed * 100003 + i)
            rows[split].append({"id": uid, "audio": f"wav/{uid}.wav", "n_samples": sf.info(str(wav_path)).frames,
                                "tgt_text": text, "speaker": voice if use_espeak else "tones"})
        write_manifest(out / f"{split}.tsv", rows[split], with_speaker=True)

    spm_model = None
    if unit == "spm":
        import sentencepiece as spm

        with open(out / "spm_train.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(texts["train"] + texts["valid"]) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(out / "spm_train.txt"), model_prefix=str(out / "spm"), vocab_size=spm_vocab_size,
            model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
            hard_vocab_limit=False,
        )
        spm_model = str(out / "spm.model")
    units = Units(unit, tokenizer_dir=tokenizer_dir, spm_model=spm_model)
    write_dict(out / "dict.txt", [units.encode(t) for s in splits for t in texts[s]])
    return out


def setup_task(data_dir, *extra_args: str, arch: str = "cif_tiny", criterion: str = "cif"):
    """A ``cif_asr`` task configured exactly as ``fairseq-train DATA --task cif_asr *extra_args`` would."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_hkd  # noqa: F401  (registers the task)

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_dir), "--task", "cif_asr", "--arch", arch, "--criterion", criterion, *extra_args]
    )
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task)


def random_padded_batch(lengths: Sequence[int], num_features: int, rng: np.random.Generator):
    """(src [B, max(lengths), F] float32 with U(1, 2) frames and zero padding, lengths [B] long): a
    collated batch of features for the batch-level augmentations' tests."""
    import torch

    lengths = torch.tensor(list(lengths))
    src = torch.zeros(len(lengths), int(lengths.max()), num_features)
    for b, n in enumerate(lengths.tolist()):
        src[b, :n] = torch.from_numpy(rng.uniform(1, 2, (n, num_features)).astype(np.float32))
    return src, lengths
