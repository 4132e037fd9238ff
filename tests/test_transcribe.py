"""fairseq-hkd-transcribe / fairseq-hkd-plot end to end on the overfit tiny model.

Reuses the session fixture ``trained_cif`` of tests/test_generate_e2e.py (one training run).
"""
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_hkd.data.manifest import read_manifest
from test_generate_e2e import fairseq_generate, trained_cif  # noqa: F401  (shared session fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_cli_wav_timestamps_plot(trained_cif, venv_bin, tmp_path):
    """The console script on a wav and a flac copy: text, monotone timestamps within the audio, PNGs."""
    entry = read_manifest(trained_cif.data / "test.tsv")[0]
    wav = Path(entry.audio)
    audio, sr = sf.read(wav)
    flac = tmp_path / "copy.flac"
    sf.write(flac, audio, sr)
    plots = tmp_path / "plots"
    cmd = [str(venv_bin / "fairseq-hkd-transcribe"), "--path", str(trained_cif.ckpt), "--beam", "4",
           "--timestamps", "--plot", str(plots), "--cpu", "--quiet", str(wav), str(flac)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().split("\n")
    assert len(lines) == 2
    duration = len(audio) / sr
    for line, utt_id in zip(lines, [wav.stem, "copy"]):
        fields = line.split("\t")
        assert fields[0] == utt_id
        assert fields[1] == entry.tgt_text
        stamps = [tok.rsplit(":", 1) for tok in fields[2].split(" ")]
        symbols = [s for s, _ in stamps]
        times = [float(t) for _, t in stamps]
        assert "".join(" " if s == "|" else s for s in symbols) == entry.tgt_text
        assert times == sorted(times)
        assert 0.0 <= times[0] and times[-1] <= duration
        assert times[-1] - times[0] > 0.3 * duration, "token times should spread over the speech"
        w, h = png_size(plots / f"{utt_id}.png")
        assert w > 100 and h > 100 and (plots / f"{utt_id}.png").stat().st_size > 5000
    assert "real-time factor" in proc.stderr
    # --plot: only INFO lines, in our format (fairseq's import left the root logger at DEBUG)
    assert "DEBUG" not in proc.stderr and "matplotlib" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"\| INFO \| fairseq_hkd\.generation\.transcribe \| transcribed 2 files", proc.stderr)


def test_python_api_matches_fairseq_generate(trained_cif, tmp_path):
    """Recognizer on the manifest gives fairseq-generate's hypotheses (same beam), in input order."""
    from fairseq_hkd.generation.transcribe import Recognizer, error_rates, read_inputs

    _, parsed = fairseq_generate(trained_cif, tmp_path, "valid", "--beam", "5")
    rec = Recognizer.from_checkpoint(str(trained_cif.ckpt), beam=5, cpu=True)
    items = read_inputs([], str(trained_cif.data / "valid.tsv"))
    results = rec.transcribe(items, batch_size=1)
    assert [r.utt_id for r in results] == [it.utt_id for it in items]
    # fairseq-generate ids are dataset indices = manifest order
    for i, r in enumerate(results):
        assert r.text == parsed[i]["D"]
        assert r.reference == parsed[i]["T"]
        assert r.score / np.log(2) == pytest.approx(parsed[i]["score"], abs=1e-3)
    rates = error_rates(results)
    assert rates["utterances"] == 2 and rates["wer"] > 0
    # batching and length sorting do not change the output
    batched = rec.transcribe(items, batch_size=8)
    assert [r.text for r in batched] == [r.text for r in results]


def test_plot_command_and_manifest_scoring(trained_cif, tmp_path, capsys):
    from fairseq_hkd.generation.plot import cli_main

    plots = tmp_path / "p"
    cli_main(["--path", str(trained_cif.ckpt), "--manifest", str(trained_cif.data / "test.tsv"), "--plot",
              str(plots), "--beam", "1", "--max-files", "2", "--cpu", "--quiet", "--output", str(tmp_path / "o.tsv")])
    lines = (tmp_path / "o.tsv").read_text().strip().split("\n")
    entries = read_manifest(trained_cif.data / "test.tsv")[:2]
    assert [ln.split("\t") for ln in lines] == [[e.id, e.tgt_text] for e in entries]
    assert sorted(p.name for p in plots.iterdir()) == sorted(f"{e.id}.png" for e in entries)


def test_plot_requires_dir(trained_cif, capsys):
    from fairseq_hkd.generation.plot import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--path", str(trained_cif.ckpt), "x.wav"])
    assert exit_info.value.code == 2  # argparse's usage error, not a crash
    err = capsys.readouterr().err
    assert "fairseq-hkd-plot" in err and "--plot" in err and "required" in err, err


def test_moved_data_dir_is_named(trained_cif, tmp_path):
    from fairseq_hkd.generation.transcribe import Recognizer

    with pytest.raises(FileNotFoundError, match="--data"):
        Recognizer.from_checkpoint(str(trained_cif.ckpt), data=str(tmp_path), cpu=True)
    rec = Recognizer.from_checkpoint(str(trained_cif.ckpt), data=str(trained_cif.data), beam=1, cpu=True)
    assert rec.downsample >= 4


def test_too_short_audio_is_rejected_with_its_name(trained_cif, tmp_path):
    from fairseq_hkd.generation.transcribe import Recognizer

    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(400, dtype=np.float32), 16000)
    rec = Recognizer.from_checkpoint(str(trained_cif.ckpt), beam=1, cpu=True)
    with pytest.raises(ValueError, match="short.wav"):
        rec.transcribe([str(short)])


def test_inner_eos_is_a_boundary_not_a_token(trained_cif):
    """An inner </s> (a sentence boundary of a model trained with sentence joins) is left out of the
    text, and every emitted token keeps the time of its own fire: the hypothesis of a real decoding
    with one token turned into </s> gives the other tokens with their original times."""
    from fairseq_hkd.generation.transcribe import Recognizer, read_inputs

    rec = Recognizer.from_checkpoint(str(trained_cif.ckpt), beam=2, cpu=True, inner_eos="yes")
    assert rec.generator.inner_eos
    assert not Recognizer.from_checkpoint(str(trained_cif.ckpt), beam=2, cpu=True).generator.inner_eos  # auto
    items = read_inputs([], str(trained_cif.data / "valid.tsv"))[:1]
    (plain,) = rec.transcribe(items, timestamps=True)
    assert len(plain.symbols) >= 3
    decode = rec.generator.decode

    def with_a_boundary(*args, **kw):
        out = decode(*args, **kw)
        out.hypos[0][0]["tokens"] = out.hypos[0][0]["tokens"].clone()
        out.hypos[0][0]["tokens"][1] = rec.tgt_dict.eos()
        return out

    rec.generator.decode = with_a_boundary
    (got,) = rec.transcribe(items, timestamps=True)
    assert got.symbols == plain.symbols[:1] + plain.symbols[2:]
    assert got.token_times == plain.token_times[:1] + plain.token_times[2:]
    assert "</s>" not in got.text
