"""Transcriber for real recordings (issue 15): inputs, block reading, segmentation, failure isolation, formats.

Fast tests use a fake decoder and synthetic audio whose content is known (tone bursts: frequency
= identity, onset = time), so joined texts and offset times are checked against independent
references; the Silero wrapper is compared with the stock per-frame model. The end-to-end tests
(marked slow) run the console script on the overfit tiny model of test_generate_e2e.
"""
import ast
import dataclasses
import io
import os
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_hkd.data.audio import AudioError, read_audio, resampled_length
from fairseq_hkd.generation import formats
from fairseq_hkd.generation.audio_stream import AudioStream
from fairseq_hkd.generation.inputs import AudioItem, InputError, collect_inputs
from fairseq_hkd.generation.pipeline import PieceResult, PipelineConfig, TranscriptionPipeline
from fairseq_hkd.generation.results import join_texts, word_spans
from fairseq_hkd.generation.segments import Segmenter, SegmenterConfig, speech_extent, trim_to_speech
from test_generate_e2e import trained_cif  # noqa: F401  (shared session fixture: one training run)

REPO = Path(__file__).resolve().parents[1]
SR = 16000
TORCH_FREE = ["inputs", "formats", "segments", "results", "pipeline", "audio_stream", "progress", "token_spans"]


# ---------------------------------------------------------------------- synthetic audio and a fake model
def bursts(plan, sr=SR, seed=0):
    """plan: [(gap_s, burst_s, freq_hz)] -> (float32 wav, [(onset_s, freq)]): tone bursts after silences."""
    rng = np.random.default_rng(seed)
    parts, truth, t = [], [], 0.0
    for gap, dur, f in plan:
        parts.append(rng.normal(0, 1e-4, int(gap * sr)).astype(np.float32))
        t += len(parts[-1]) / sr
        n = int(dur * sr)
        parts.append((0.3 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32))
        truth.append((t, f))
        t += n / sr
    parts.append(np.zeros(int(0.5 * sr), dtype=np.float32))
    return np.concatenate(parts), truth


class EnergyDetector:
    """A stand-in speech detector: frame RMS above 0.01."""

    frame_samples = 512

    def reset(self):
        pass

    def __call__(self, frames):
        return (np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > 0.01).astype(np.float32)


def fake_decode(items, pieces):
    """One 'word' per tone run in the piece (runs apart by > 400 quiet samples): f<freq> at its
    onset, then '|'; token score -0.5 each."""
    out = []
    for p in pieces:
        loud = np.nonzero(np.abs(p.wav) > 0.05)[0]
        runs = np.split(loud, np.nonzero(np.diff(loud) > 400)[0] + 1) if len(loud) else []
        words = [f"f{int(round(np.argmax(np.abs(np.fft.rfft(p.wav[r[0]: r[0] + 4000], SR))) / 100.0)) * 100}"
                 for r in runs]
        times = [r[0] / SR for r in runs]
        syms = [x for w in words for x in (w, "|")][:-1]
        tt = [x for tm in times for x in (tm, tm)][:-1]
        out.append(PieceResult(" ".join(words), syms, tt, [-0.5] * len(syms), -0.5 * len(syms), len(syms),
                               [(w, 2 * i, 2 * i + 1) for i, w in enumerate(words)]))
    return out


def make_pipeline(max_segment_s=4.0, batch_size=3, edges="speech", block_s=1.024, **kw):
    cfg = PipelineConfig(batch_size=batch_size, min_samples=1520, block_s=block_s,
                         segmenter=SegmenterConfig(max_segment_s=max_segment_s, min_silence_s=0.3, pad_start_s=0.03,
                                                   pad_end_s=0.1, min_speech_s=0.25, edges=edges), **kw)
    return TranscriptionPipeline(fake_decode, EnergyDetector, cfg)


# ---------------------------------------------------------------------- torch-free modules
def _top_level_imports(path):
    tree = ast.parse(Path(path).read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_shared_modules_do_not_import_torch():
    """What the ONNX runtime reuses imports neither torch nor fairseq at module level (also through
    the fairseq_hkd modules they import)."""
    todo = [f"fairseq_hkd.generation.{m}" for m in TORCH_FREE]
    seen = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for name in _top_level_imports(REPO / (mod.replace(".", "/") + ".py")):
            root = name.split(".")[0]
            assert root not in ("torch", "fairseq"), f"{mod} imports {name} at module level"
            if name.startswith("fairseq_hkd."):
                todo.append(name)
    assert "fairseq_hkd.data.audio" in seen


# ---------------------------------------------------------------------- inputs
def test_inputs_files_folders_lists_stdin(tmp_path):
    root = tmp_path / "rec"
    (root / "sub").mkdir(parents=True)
    for rel in ["b.wav", "a.flac", "sub/c.WAV", "sub/d.ogg"]:
        sf.write(root / rel, np.zeros(1600, np.float32), SR, format=Path(rel).suffix[1:].upper())
    (root / "notes.txt").write_text("not audio")
    (root / "sub" / "x.mat").write_text("not audio")
    items = collect_inputs([str(root)])
    assert [it.utt_id for it in items] == ["a", "b", "sub/c", "sub/d"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my files\n{root / 'b.wav'}\n\n{root / 'sub'}\n{tmp_path / 'missing.wav'}\n")
    items = collect_inputs([], list_file=str(lst))
    assert [it.utt_id for it in items] == ["b", "sub/c", "sub/d", "missing"] or \
        [it.utt_id for it in items] == ["b", "c", "d", "missing"]
    stdin = io.StringIO(f"{root / 'a.flac'}\n")
    assert [it.audio for it in collect_inputs(["-"], stdin=stdin)] == [str(root / "a.flac")]
    stdin = io.StringIO(f"{root / 'a.flac'}\n")
    assert [it.utt_id for it in collect_inputs([], list_file="-", stdin=stdin)] == ["a"]
    with pytest.raises(InputError, match="--list"):
        collect_inputs([], list_file=str(tmp_path / "nope.txt"))


def test_inputs_ids_stay_unique_and_a_file_given_twice_is_read_once(tmp_path, caplog):
    """Ids name the output files: same-named files get their extension, then their path; no input
    is refused for its name."""
    for rel in ["x/a.wav", "x/a.flac", "y/a.wav", "x/b.wav"]:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / rel, np.zeros(1600, np.float32), SR, format=Path(rel).suffix[1:].upper())
    x, y = tmp_path / "x", tmp_path / "y"
    items = collect_inputs([str(x)])  # a folder with a.flac and a.wav
    assert [(it.utt_id, Path(it.audio).name) for it in items] == [("a.flac", "a.flac"), ("a.wav", "a.wav"), ("b", "b.wav")]
    items = collect_inputs([str(x / "a.wav"), str(y / "a.wav"), str(x / "b.wav")])
    assert [it.utt_id for it in items] == [str(x / "a.wav"), str(y / "a.wav"), "b"]
    with caplog.at_level("WARNING"):
        items = collect_inputs([str(x / "b.wav"), str(x), str(tmp_path / "x" / ".." / "x" / "b.wav")])
    assert [it.utt_id for it in items] == ["b", "a.flac", "a.wav"]  # b.wav once, where first given
    assert sum("given more than once" in r.message for r in caplog.records) == 2
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"id\taudio\tn_samples\ttgt_text\nb\t{y / 'a.wav'}\t1600\thi\n")
    items = collect_inputs([str(x / "b.wav"), str(y / "a.wav")], manifest=str(manifest))
    assert [(it.utt_id, it.reference) for it in items] == [("b", "hi"), ("b.wav", None)]  # the manifest keeps its id


# ---------------------------------------------------------------------- block reading
@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1), (16000, 1)])
def test_stream_reads_blocks_only_and_equals_whole_file(tmp_path, monkeypatch, rate, channels):
    rng = np.random.default_rng(rate)
    x = (0.1 * rng.standard_normal((int(rate * 5.3), channels))).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, x, rate)
    requested = []
    orig = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        requested.append(frames)
        return orig(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    stream = AudioStream(str(path), block_s=0.5)
    blocks = list(stream.blocks())
    monkeypatch.setattr(sf.SoundFile, "read", orig)
    assert requested and all(0 < f == stream.block <= 0.5 * rate + stream.down for f in requested), requested
    assert max(len(b) for b in blocks) <= 0.5 * SR + 16
    whole = read_audio(str(path))
    got = np.concatenate(blocks)
    assert len(got) == resampled_length(len(x), rate) == len(whole)
    np.testing.assert_allclose(got, whole, atol=1e-6)


# ---------------------------------------------------------------------- segmentation, joining, memory
@pytest.mark.parametrize("edges,block_s", [("vad", 1.024), ("speech", 1.024), ("speech", 0.128)])
def test_long_file_segments_join_with_original_times(tmp_path, edges, block_s):
    """Bursts after pauses -> one segment each; joined text in order; token times = burst onsets.
    Edges: ``vad``, the detector's frames (32 ms) + pads; ``speech``, 10 ms before each burst's
    onset and 350 ms after its end (within a 4-ms sub-frame), cut short where the next burst
    follows sooner (the 0.35 s pause), pieces never overlapping; the same for any block size."""
    plan = [(0.4, 1.2, 300), (0.6, 2.0, 500), (0.35, 0.8, 700), (1.0, 1.5, 900), (0.5, 2.2, 1100), (0.45, 1.0, 1300)]
    wav, truth = bursts(plan)
    path = tmp_path / "long.wav"
    sf.write(path, wav, SR)
    [t] = list(make_pipeline(edges=edges, block_s=block_s).run([AudioItem("long", str(path))]))
    assert t.ok and len(t.segments) == len(plan)
    assert t.text == " ".join(f"f{f}" for _, f in truth)
    onsets = [w.start for w in t.words]
    np.testing.assert_allclose(onsets, [o for o, _ in truth], atol=0.002)
    for k, (seg, (onset, _), (_, dur, _)) in enumerate(zip(t.segments, truth, plan)):
        if edges == "vad":
            assert seg.start <= onset and onset + dur <= seg.end <= onset + dur + 0.1 + 0.033
        else:
            assert onset - 0.014 - 1e-6 <= seg.start <= onset - 0.01 + 1e-6, (k, seg.start, onset)
            end = onset + dur + 0.35
            if k + 1 < len(truth) and truth[k + 1][0] - 0.014 < end:  # the next burst comes first
                assert onset + dur + 0.1 < seg.end <= t.segments[k + 1].start, (k, seg.end)
            else:
                assert end - 1e-6 <= seg.end <= end + 0.004 + 1e-6, (k, seg.end, end)
    assert t.duration == pytest.approx(len(wav) / SR)
    assert [tm for s, tm in zip(t.symbols, t.token_times) if s != "|"] == onsets


def test_speech_edges_keep_the_detector_edges_in_noise():
    """Where a segment's loudest sub-frame is less than 30 dB above the noise around it, onset and
    offset are not defined: the spans are those of ``edges="vad"``; in quiet, they differ."""
    plan = [(0.5, 1.0, 400), (0.6, 1.5, 800), (0.7, 1.2, 1200)]
    clean, _ = bursts(plan)
    noise = np.random.default_rng(1).normal(0, 0.008, clean.shape[0]).astype(np.float32)  # tone 0.3: 28.5 dB above

    def spans(wav, edges):
        seg = Segmenter(EnergyDetector(), SegmenterConfig(min_silence_s=0.3, pad_end_s=0.1, edges=edges))
        out = []
        for i in range(0, len(wav), 3000):
            out += seg.feed(wav[i: i + 3000])
        return out + seg.finish()

    assert len(spans(clean + noise, "speech")) == 3
    assert spans(clean + noise, "speech") == spans(clean + noise, "vad")
    assert spans(clean, "speech") != spans(clean, "vad")


class CentredEnergyDetector(EnergyDetector):
    """The stand-in detector, blind to a DC offset (as Silero, which sees the waveform's shape)."""

    def __call__(self, frames):
        return super().__call__(frames - frames.mean(axis=1, keepdims=True))


@pytest.mark.parametrize("dc", [0.2, -0.05])
def test_speech_edges_survive_a_dc_offset(dc):
    """A constant offset (rule 5) moves no speech edge: the spans of the file plus ``dc`` are those of
    the file, where the offset's square in the levels (0.2: -14 dB, 26 dB under the tones) made every
    segment fall back to the detector's edges before; the whole-file extent too. A slow drift (the
    offset rising linearly by 0.005 over the 6-s file) moves no edge by more than one 4-ms sub-frame."""
    plan = [(0.5, 1.0, 400), (0.6, 1.5, 800), (0.7, 1.2, 1200)]
    clean, _ = bursts(plan)

    def spans(wav, edges="speech"):
        seg = Segmenter(CentredEnergyDetector(), SegmenterConfig(min_silence_s=0.3, pad_end_s=0.1, edges=edges))
        out = []
        for i in range(0, len(wav), 3000):
            out += seg.feed(wav[i: i + 3000])
        return out + seg.finish()

    want = spans(clean)
    assert len(want) == 3 and want != spans(clean, "vad")
    assert spans(clean + np.float32(dc)) == want
    drift = clean + np.linspace(0, 0.005, clean.shape[0], dtype=np.float32)
    got = spans(drift)
    assert len(got) == 3 and np.abs(np.subtract(got, want)).max() <= 64, (got, want)
    assert speech_extent(clean + np.float32(dc), SegmenterConfig()) == speech_extent(clean, SegmenterConfig())


def test_speech_without_pauses_is_cut_at_max_length():
    """A 13 s run of tones with no pause: pieces of at most max_segment_s, contiguous, cut in the
    quieter dip between tones rather than inside one."""
    sr = SR
    tones = []
    for k in range(13):  # 1 s tones separated by a 40 ms dip (too short to be a pause)
        n = sr - 640
        tones += [(0.3 * np.sin(2 * np.pi * (300 + 100 * k) * np.arange(n) / sr)).astype(np.float32),
                  np.full(640, 0.02, dtype=np.float32)]
    wav = np.concatenate([np.zeros(sr // 2, np.float32)] + tones + [np.zeros(sr, np.float32)])
    seg = Segmenter(EnergyDetector(), SegmenterConfig(max_segment_s=4.0, min_silence_s=0.3, pad_start_s=0.0,
                                                      pad_end_s=0.1))
    spans = []
    for i in range(0, len(wav), 5000):
        spans += seg.feed(wav[i: i + 5000])
    spans += seg.finish()
    assert len(spans) >= 4
    assert all(b - a <= 4.0 * sr for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1)), spans
    for a, _ in spans[1:]:  # each cut lies in a dip: within one frame of a dip's start
        offset = (a - sr // 2) % sr
        assert offset >= sr - 640 - 512 or offset <= 512, (a, offset)


def test_long_file_memory_is_bounded(tmp_path):
    """10 minutes of audio (38 MB as float32, 19 MB as the wav): the peak allocation while segmenting
    stays far below, because only blocks, the open segment and the pooled pieces (here 16 of 2.6 s)
    are held, never the samples of decoded pieces."""
    plan = [(0.5, 2.0, 300 + 100 * (k % 10)) for k in range(240)]
    wav, truth = bursts(plan)
    path = tmp_path / "ten_min.wav"
    sf.write(path, wav, SR, subtype="PCM_16")
    del wav

    def no_model(items, pieces):
        return [PieceResult("", [], [], [], 0.0, 0) for _ in pieces]

    cfg = make_pipeline(max_segment_s=10.0, batch_size=8, chunk_batches=2).cfg
    tracemalloc.start()
    [t] = list(TranscriptionPipeline(no_model, EnergyDetector, cfg).run([AudioItem("long", str(path))]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert t.ok and len(t.segments) == len(truth) and t.duration > 590
    assert peak < 6e6, f"peak {peak / 1e6:.1f} MB for a {t.duration / 60:.0f}-minute file"


# ---------------------------------------------------------------------- failures
def write_bad_files(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    (d / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(40)))
    sf.write(d / "empty.wav", np.zeros(0, np.float32), SR)
    sf.write(d / "short.wav", np.zeros(480, np.float32), SR)  # 30 ms
    return {"corrupt": "cannot read", "empty": "empty", "short": "too short"}


def test_failures_are_isolated_and_in_order(tmp_path):
    good, _ = bursts([(0.3, 1.0, 400)])
    long, _ = bursts([(0.5, 1.5, 600)] * 5)
    sf.write(tmp_path / "a_good.wav", good, SR)
    sf.write(tmp_path / "z_long.flac", long, SR)
    reasons = write_bad_files(tmp_path)
    items = collect_inputs([str(tmp_path), str(tmp_path / "nothere.wav")])
    results = list(make_pipeline().run(items))
    assert [r.utt_id for r in results] == ["a_good", "corrupt", "empty", "short", "z_long", "nothere"]
    ok = {r.utt_id: r for r in results if r.ok}
    assert ok["a_good"].text == "f400" and ok["z_long"].text == " ".join(["f600"] * 5)
    errors = {r.utt_id: r.line() for r in results if not r.ok}
    assert set(errors) == set(reasons) | {"nothere"}
    for name, why in list(reasons.items()) + [("nothere", "no such file")]:
        assert str(tmp_path / name) in errors[name] and why in errors[name], errors[name]
        assert "\n" not in errors[name]


def test_non_finite_samples_fail_their_file_only(tmp_path):
    """A float file with a NaN deep inside a long recording (after earlier segments were decoded) and a
    short one with an infinity: each gets one error line naming the file and the time of the first bad
    sample (a NaN would otherwise make every fbank frame NaN and stop the run); the files around them
    are transcribed."""
    good, _ = bursts([(0.3, 1.0, 400)])
    long, _ = bursts([(0.5, 1.5, 600)] * 5)
    long[int(7.5 * SR):int(7.5 * SR) + 3] = np.nan
    short = good.copy()
    short[SR // 2] = np.inf
    sf.write(tmp_path / "a_good.wav", good, SR)
    sf.write(tmp_path / "b_damaged.wav", long, SR, subtype="FLOAT")
    sf.write(tmp_path / "c_inf.wav", short, SR, subtype="FLOAT")
    sf.write(tmp_path / "d_good.wav", good, SR)
    decoded = []

    def decode(items, pieces):
        decoded.extend(p.item_index for p in pieces)
        return fake_decode(items, pieces)

    pipe = make_pipeline(batch_size=1, chunk_batches=1)
    pipe.decode = decode
    results = list(pipe.run(collect_inputs([str(tmp_path)])))
    assert [(r.utt_id, r.ok) for r in results] == [("a_good", True), ("b_damaged", False), ("c_inf", False),
                                                    ("d_good", True)]
    assert results[0].text == results[3].text == "f400"
    assert 1 in decoded  # the long file's first segments were decoded before its NaN was read
    assert results[1].line() == (f"audio {tmp_path / 'b_damaged.wav'} has 3 non-finite sample value(s) (NaN or "
                                 "infinity), the first at 7.500 s; the file is damaged: re-export it")
    assert "1 non-finite" in results[2].line() and "at 0.500 s" in results[2].line()
    with pytest.raises(AudioError, match=r"m\.tsv:9: audio .*c_inf\.wav has 1 non-finite .* at 0\.500 s"):
        read_audio(str(tmp_path / "c_inf.wav"), "m.tsv:9")  # training and fairseq-generate read this way


def test_programming_errors_propagate(tmp_path):
    good, _ = bursts([(0.3, 1.0, 400)])
    sf.write(tmp_path / "a.wav", good, SR)

    def broken(items, pieces):
        raise KeyError("a bug")

    pipe = TranscriptionPipeline(broken, EnergyDetector, PipelineConfig(min_samples=1520))
    with pytest.raises(KeyError):
        list(pipe.run([AudioItem("a", str(tmp_path / "a.wav"))]))


# ---------------------------------------------------------------------- formats
def test_every_format_reads_back(tmp_path):
    wav, truth = bursts([(0.4, 1.2, 300), (0.6, 2.0, 500), (0.5, 1.0, 700), (0.7, 1.4, 900)])
    sf.write(tmp_path / "talk.wav", wav, SR)
    [t] = list(make_pipeline().run([AudioItem("sub/talk", str(tmp_path / "talk.wav"))]))
    # tsv (times to 10 ms), text
    [(uid, text, stamps)] = formats.read_tsv(formats.render(t, "tsv", timestamps=True))
    assert (uid, text) == ("sub/talk", t.text)
    assert [s for s, _ in stamps] == t.symbols
    np.testing.assert_allclose([x for _, x in stamps], t.token_times, atol=0.005)
    assert formats.read_text(formats.render(t, "text")) == [t.text]
    # json: per-token symbols, times and scores; per-file and streamed (JSON Lines)
    for stream in (False, True):
        [d] = formats.read_json(formats.render(t, "json", stream=stream))
        toks = [x for s in d["segments"] for x in s["tokens"]]
        assert [x["symbol"] for x in toks] == t.symbols
        np.testing.assert_allclose([x["time"] for x in toks], t.token_times, atol=5e-4)
        np.testing.assert_allclose([x["score"] for x in toks], t.token_scores, atol=5e-5)
        assert d["text"] == t.text and len(d["segments"]) == len(t.segments)
        words = [x for s in d["segments"] for x in s["words"]]
        assert [x["text"] for x in words] == [w.text for w in t.words]
        # a word's probability: the product of its tokens' (here one token of log-probability -0.5 each)
        assert [x["probability"] for x in words] == pytest.approx([np.exp(-0.5)] * len(words), abs=5e-5)
    # subtitles: the cues' text is the transcript; cues in order, within the file, around their words
    for fmt in ("srt", "vtt"):
        cues = formats.read_subtitles(formats.render(t, fmt))
        assert join_texts([c.text for c in cues]) == t.text
        assert all(c.start < c.end for c in cues)
        assert all(a.end <= b.start + 1e-3 for a, b in zip(cues, cues[1:]))
        for c, w in zip(cues, t.words):  # one word per cue here (short words, long pauses)
            assert c.start - 1e-3 <= w.start <= c.end + 1e-3
    # per-file output keeps the id's sub-folder
    w = formats.OutputWriter("vtt", output_dir=str(tmp_path / "out"))
    w.write(t)
    assert w.paths == [str(tmp_path / "out" / "sub" / "talk.vtt")]
    assert Path(w.paths[0]).read_text().startswith("WEBVTT")


def test_subtitle_cues_split_long_segments():
    from fairseq_hkd.generation.results import Segment, Transcript, Word

    words = [Word(f"word{i}", 0.5 * i, 0.5 * i + 0.3) for i in range(40)]
    seg = Segment(0.0, 20.5, " ".join(w.text for w in words), [], [], [], 0.0, words)
    t = Transcript("x", "x.wav", seg.text, [], 0.0, 20.5, 0, segments=[seg])
    cues = formats.subtitle_cues(t, max_chars=84, max_seconds=7.0)
    assert len(cues) > 3 and join_texts([c.text for c in cues]) == t.text
    assert all(len(c.text) <= 84 and c.end - c.start <= 7.5 for c in cues)
    assert cues[0].start == 0.0 and cues[-1].end == 20.5
    text = formats.render_subtitles(cues, "srt")
    assert all(len(line) <= 42 for line in text.splitlines())


def test_word_spans_per_unit():
    assert word_spans(["h", "i", "|", "y", "o", "u"], "char") == [(0, 2), (3, 6)]
    assert word_spans(["你", "好", "吗"], "char") == [(0, 1), (1, 2), (2, 3)]
    assert word_spans(["the", "gal", "##axy", "is"], "wordpiece") == [(0, 1), (1, 3), (3, 4)]
    assert word_spans(["\u2581the", "\u2581gal", "axy"], "spm") == [(0, 1), (1, 3)]
    assert word_spans(["it's", "##s", "the"], "word") == [(0, 1), (1, 2), (2, 3)]  # every word unit is a word
    assert join_texts(["你好", "吗", "ok", "fine"]) == "你好吗 ok fine"


# ---------------------------------------------------------------------- Silero VAD
def test_silero_batched_equals_stock_model(tiny_corpus):
    """SileroVad (frames in blocks, nn.LSTM) gives the stock per-frame model's probabilities."""
    torch = pytest.importorskip("torch")
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.vad import SileroVad, silero_model_path

    wavs = [read_audio(e.audio) for e in read_manifest(tiny_corpus / "valid.tsv")[:2]]
    wav = np.concatenate([wavs[0], np.zeros(6000, np.float32), wavs[1]])
    n = len(wav) // 512
    frames = wav[: n * 512].reshape(n, 512)
    stock = torch.jit.load(silero_model_path()).eval()
    stock.reset_states()
    with torch.no_grad():
        ref = np.array([stock(torch.from_numpy(f)[None], 16000).item() for f in frames])
    vad = SileroVad()
    ours = np.concatenate([vad(frames[:17]), vad(frames[17:18]), vad(frames[18:])])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert ref.max() > 0.9 and ref.min() < 0.1  # speech and silence both present
    vad.reset()
    np.testing.assert_allclose(vad(frames), ref, atol=1e-4)


def test_onnx_silero_equals_torch_silero(tiny_corpus):
    """The ONNX runtime's detector (runtime/vad.py, onnxruntime only) gives SileroVad's probabilities,
    whatever the blocks."""
    pytest.importorskip("torch")
    from fairseq_hkd.data.manifest import read_manifest
    from fairseq_hkd.generation.vad import SileroVad
    from fairseq_hkd.runtime.vad import OnnxSileroVad

    wavs = [read_audio(e.audio) for e in read_manifest(tiny_corpus / "valid.tsv")[:3]]
    wav = np.concatenate([wavs[0], np.zeros(6000, np.float32), wavs[1], np.zeros(9000, np.float32), wavs[2]])
    n = len(wav) // 512
    frames = wav[: n * 512].reshape(n, 512)
    ref = SileroVad()(frames)
    vad = OnnxSileroVad()
    ours = np.concatenate([vad(frames[:5]), vad(frames[5:6]), vad(frames[6:6]), vad(frames[6:])])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert ref.max() > 0.9 and ref.min() < 0.1
    vad.reset()
    np.testing.assert_allclose(vad(frames), ref, atol=1e-4)


# ---------------------------------------------------------------------- end to end (console script)
@pytest.mark.slow
def test_cli_folder_with_bad_files(trained_cif, venv_bin, tmp_path):
    """A folder with one corrupt, one empty and one 30 ms file: exactly those 3 ERROR lines, exit
    status 1, the count in the summary, and transcripts for the others (a long concatenation of the
    utterances, split at its pauses, gives their transcripts joined)."""
    from corpus import have_espeak

    from fairseq_hkd.data.manifest import read_manifest

    entries = read_manifest(trained_cif.data / "test.tsv")[:3]
    d = tmp_path / "in"
    reasons = write_bad_files(d)
    (d / "long").mkdir()
    parts = []
    for e in entries:
        x = read_audio(e.audio)
        sf.write(d / f"{e.id}.wav", x, SR)
        parts += [x, np.zeros(int(0.6 * SR), np.float32)]
    long = np.concatenate(parts)
    sf.write(d / "long" / "all.flac", long, SR)
    out = tmp_path / "out"
    cmd = [str(venv_bin / "fairseq-hkd-transcribe"), "--path", str(trained_cif.ckpt), "--beam", "1", "--cpu",
           "--max-segment", str(0.8 * len(long) / SR / 2), "--format", "json", "--output-dir", str(out), str(d)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "| ERROR |" in ln]
    assert len(errors) == 4, errors  # 3 files + the closing count
    for name, why in reasons.items():
        assert sum(str(d / f"{name}.wav") in ln and why in ln for ln in errors) == 1, (name, errors)
    assert "3 of 7 files failed" in errors[-1]
    assert "Traceback" not in proc.stderr
    got = {p.relative_to(out).with_suffix("").as_posix(): formats.read_json(p.read_text())[0] for p in out.rglob("*.json")}
    assert set(got) == {e.id for e in entries} | {"long/all"}
    for e in entries:
        assert got[e.id]["text"] == e.tgt_text
    if have_espeak():  # tones (no espeak) are not speech to Silero
        joined = got["long/all"]
        assert len(joined["segments"]) == len(entries)
        # the text is the segments' texts joined; each segment spans its utterance (the words
        # themselves may differ from the files': this tiny overfit model is sensitive to a few tens
        # of ms of edge silence, see BENCHMARKS.md "Long recordings")
        assert joined["text"] == " ".join(seg["text"] for seg in joined["segments"])
        starts = np.cumsum([0] + [len(p) for p in parts])[:-1:2] / SR
        for seg, s0, part in zip(joined["segments"], starts, parts[::2]):
            assert abs(seg["start"] - s0) < 0.15 and seg["tokens"][0]["time"] >= s0
            assert seg["end"] >= s0 + len(part) / SR - 0.15
        import editdistance
        ref = " ".join(e.tgt_text for e in entries).split()
        assert editdistance.eval(joined["text"].split(), ref) <= len(ref) // 2, (joined["text"], ref)


@pytest.mark.slow
def test_cli_formats_and_list_from_stdin(trained_cif, venv_bin, tmp_path):
    """--list - with --format tsv/text/srt: the same transcripts, subtitles timed within the file."""
    from fairseq_hkd.data.manifest import read_manifest

    entries = read_manifest(trained_cif.data / "test.tsv")[:2]
    base = [str(venv_bin / "fairseq-hkd-transcribe"), "--path", str(trained_cif.ckpt), "--beam", "1", "--cpu",
            "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    listing = "".join(f"{e.audio}\n" for e in entries)
    tsv = subprocess.run(base + ["--list", "-", "--timestamps"], input=listing, capture_output=True, text=True,
                         cwd=REPO, env=env)
    assert tsv.returncode == 0, tsv.stderr[-2000:]
    rows = formats.read_tsv(tsv.stdout)
    assert [(r[0], r[1]) for r in rows] == [(Path(e.audio).stem, e.tgt_text) for e in entries]
    text = subprocess.run(base + ["--format", "text", "-"], input=listing, capture_output=True, text=True,
                          cwd=REPO, env=env)
    assert formats.read_text(text.stdout) == [e.tgt_text for e in entries]
    srt = subprocess.run(base + ["--format", "srt", entries[0].audio], capture_output=True, text=True, cwd=REPO,
                         env=env)
    cues = formats.read_subtitles(srt.stdout)
    assert join_texts([c.text for c in cues]) == entries[0].tgt_text
    assert cues[0].start >= 0 and cues[-1].end <= sf.info(entries[0].audio).duration + 1e-3
    two = subprocess.run(base + ["--format", "srt", entries[0].audio, entries[1].audio], capture_output=True,
                         text=True, cwd=REPO, env=env)
    assert two.returncode != 0 and "--output-dir" in two.stderr and "Traceback" not in two.stderr


def test_short_files_lose_the_silence_beyond_the_edge_pads(tmp_path):
    """With ``trim_files`` a file decoded whole keeps 10 ms before its burst and 350 ms after it (within
    a 4-ms sub-frame), never more than it has; by default, in noise (range < 30 dB), with
    ``edges="vad"`` or where the rest would be shorter than the model's minimum it stays whole; times
    stay those of the file."""
    cfg = SegmenterConfig(trim_files=True)
    wav, [(onset, _)] = bursts([(0.6, 1.0, 500)])  # 0.6 s before, 0.5 s of zeros after
    a, b = trim_to_speech(wav, cfg)
    assert onset - 0.014 - 1e-6 <= a / SR <= onset - 0.01 + 1e-6
    assert onset + 1.0 + 0.35 - 1e-6 <= b / SR <= onset + 1.0 + 0.354 + 1e-6
    tight = wav[int((onset - 0.005) * SR): int((onset + 1.2) * SR)]  # 5 ms before, 200 ms after: nothing to cut
    assert trim_to_speech(tight, cfg) == (0, len(tight))
    assert trim_to_speech(wav, SegmenterConfig()) == (0, len(wav))
    assert trim_to_speech(wav, SegmenterConfig(edges="vad", trim_files=True)) == (0, len(wav))
    assert trim_to_speech(wav, cfg, min_samples=len(wav)) == (0, len(wav))
    noisy = wav + np.random.default_rng(1).normal(0, 0.01, len(wav)).astype(np.float32)  # 26.5 dB below the tone
    assert trim_to_speech(noisy, cfg) == (0, len(wav))
    path = tmp_path / "short.wav"
    sf.write(path, wav, SR)
    [whole] = list(make_pipeline().run([AudioItem("short", str(path))]))
    assert len(whole.segments) == 1 and whole.segments[0].start == 0.0
    pipe = make_pipeline()
    pipe.cfg.segmenter = dataclasses.replace(pipe.cfg.segmenter, trim_files=True)
    [t] = list(pipe.run([AudioItem("short", str(path))]))
    assert len(t.segments) == 1 and t.segments[0].start == pytest.approx(a / SR)
    assert t.text == "f500" and t.words[0].start == pytest.approx(onset, abs=0.002)
    assert t.duration == pytest.approx(len(wav) / SR)


def test_segment_edge_options_parse_and_bad_pads_exit_with_one_line():
    """--segment-edges / --edge-pads / --trim-files reach the SegmenterConfig; a negative pad is a one-line exit."""
    import argparse

    from fairseq_hkd.generation.cli_options import add_segmenter_args, segmenter_from_args

    p = argparse.ArgumentParser()
    add_segmenter_args(p)
    cfg = segmenter_from_args(p.parse_args([]))
    assert (cfg.edges, cfg.edge_pads_s, cfg.trim_files) == ("speech", (0.01, 0.35), False)
    cfg = segmenter_from_args(p.parse_args(["--segment-edges", "vad", "--edge-pads", "0.2", "0.5", "--trim-files"]))
    assert (cfg.edges, cfg.edge_pads_s, cfg.trim_files) == ("vad", (0.2, 0.5), True)
    with pytest.raises(SystemExit, match="--edge-pads"):
        segmenter_from_args(p.parse_args(["--edge-pads", "-0.1", "0.3"]))
