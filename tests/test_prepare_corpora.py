"""AISHELL-1 and LibriSpeech manifest preparation on small fake trees in the corpora's real layouts.

The trees copy the real file names and formats: AISHELL-1's word-segmented transcript file (which
lists utterances that have no audio) and 16 kHz wav under wav/{train,dev,test}/SPEAKER/;
LibriSpeech's SUBSET/SPEAKER/CHAPTER/*.flac with upper-case SPEAKER-CHAPTER.trans.txt. The
manifests are read back with the consumer's parser (fairseq_hkd.data.manifest.read_manifest) and
compared with what the trees were built from.
"""
import os

import numpy as np
import pytest
import soundfile as sf

from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.prepare import aishell1, librispeech

SR = 16000


def _write_audio(path, n, sr=SR, channels=1, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(n)
    data = (0.1 * rng.standard_normal((n, channels) if channels > 1 else n)).astype(np.float32)
    sf.write(path, data, sr, subtype="PCM_16", format=fmt)


# ---------------------------------------------------------------- AISHELL-1

AISHELL_TRANSCRIPT = """\
BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购
BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉
BAC009S0002W0124 自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后
BAC009S0003W0121 如果 没有 调控 措施
BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况
BAC009S0764W0121 一二 线 城市 虽然 也 处于 调整 中
BAC009S0764W0122 但 因为 聚集 了 过多 公共 资源
BAC009S0916W0121 为了 规避 三 四 线 城市 明显 过剩 的 市场 风险
"""
# audio present: train S0002 W0122, W0124 (n), S0003 W0121 (n) + W0199 (no transcript);
# dev S0724 W0121; test S0764 W0121, W0122 at 8 kHz (skipped); S0916 W0121 has no audio, nor S0002 W0123.
AISHELL_AUDIO = {
    ("train", "S0002", "BAC009S0002W0122"): 16000 + 37,
    ("train", "S0002", "BAC009S0002W0124"): 8000,
    ("train", "S0003", "BAC009S0003W0121"): 12345,
    ("train", "S0003", "BAC009S0003W0199"): 9000,
    ("dev", "S0724", "BAC009S0724W0121"): 20000,
    ("test", "S0764", "BAC009S0764W0121"): 7777,
}


@pytest.fixture
def aishell_tree(tmp_path):
    root = tmp_path / "aishell" / "data_aishell"
    (root / "transcript").mkdir(parents=True)
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(AISHELL_TRANSCRIPT, encoding="utf-8")
    for (split, spk, utt), n in AISHELL_AUDIO.items():
        _write_audio(str(root / "wav" / split / spk / f"{utt}.wav"), n)
    _write_audio(str(root / "wav" / "test" / "S0764" / "BAC009S0764W0122.wav"), 4000, sr=8000)
    return root


def test_aishell1_manifests(aishell_tree, tmp_path):
    out = tmp_path / "manifests"
    _, problems = aishell1.prepare(str(aishell_tree.parent), str(out), jobs=2)

    texts = {ln.split()[0]: "".join(ln.split()[1:]) for ln in AISHELL_TRANSCRIPT.splitlines()}
    for split in ("train", "dev", "test"):
        entries = read_manifest(out / f"{split}.tsv")
        expect = sorted((utt, spk, n) for (s, spk, utt), n in AISHELL_AUDIO.items()
                        if s == split and utt in texts)
        assert [(e.id, e.speaker, e.n_samples) for e in entries] == expect
        for e in entries:
            assert e.tgt_text == texts[e.id] and " " not in e.tgt_text
            assert os.path.isabs(e.audio) and sf.info(e.audio).frames == e.n_samples
    train = read_manifest(out / "train.tsv")
    assert train[0].tgt_text == "而对楼市成交抑制作用最大的限购"

    assert problems == {"transcript without audio": 2,  # S0002W0123, S0916W0121
                        "train: audio without transcript": 1,  # S0003W0199
                        "test: sample rate != 16000": 1}  # the 8 kHz file is counted, not kept


def test_aishell1_cli(aishell_tree, tmp_path):
    aishell1.cli_main(["--corpus", str(aishell_tree), "--out", str(tmp_path), "--splits", "dev", "--jobs", "1"])
    assert [e.id for e in read_manifest(tmp_path / "dev.tsv")] == ["BAC009S0724W0121"]
    assert not (tmp_path / "train.tsv").exists()


def test_aishell1_missing_split_is_a_clear_error(aishell_tree, tmp_path):
    import shutil

    shutil.rmtree(aishell_tree / "wav" / "dev")
    with pytest.raises(FileNotFoundError, match="wav/dev does not exist"):
        aishell1.prepare(str(aishell_tree), str(tmp_path / "m"))
    # asking only for the splits that exist works
    aishell1.prepare(str(aishell_tree), str(tmp_path / "m"), splits=("train", "test"))
    assert len(read_manifest(tmp_path / "m" / "train.tsv")) == 3


# ---------------------------------------------------------------- LibriSpeech

LIBRI = {
    # subset: {(speaker, chapter): [(utt_index, text, n_samples or None = no audio)]}
    "dev-clean": {
        ("1272", "128104"): [(0, "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", 23440),
                             (1, "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING THAN HIS MATTER", 16000),
                             (2, "HE TELLS US THAT AT THIS FESTIVE SEASON", None)],
        ("2277", "149896"): [(0, "HE WAS IN A FEVERED STATE OF MIND", 30001)],
    },
    "test-clean": {
        ("1089", "134686"): [(0, "HE HOPED THERE WOULD BE STEW FOR DINNER", 52000),
                             (1, "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM", 12000)],
    },
}


@pytest.fixture
def libri_tree(tmp_path):
    root = tmp_path / "LibriSpeech"
    for subset, chapters in LIBRI.items():
        for (spk, chap), utts in chapters.items():
            d = root / subset / spk / chap
            d.mkdir(parents=True)
            lines = []
            for idx, text, n in utts:
                utt = f"{spk}-{chap}-{idx:04d}"
                lines.append(f"{utt} {text}\n")
                if n is not None:
                    _write_audio(str(d / f"{utt}.flac"), n, fmt="FLAC")
            (d / f"{spk}-{chap}.trans.txt").write_text("".join(lines), encoding="utf-8")
    # a flac without a transcript line
    _write_audio(str(root / "test-clean" / "1089" / "134686" / "1089-134686-0099.flac"), 5000, fmt="FLAC")
    return root


def test_librispeech_manifests(libri_tree, tmp_path):
    out = tmp_path / "manifests"
    librispeech.cli_main(["--corpus", str(libri_tree), "--out", str(out), "--subsets", "dev-clean",
                          "test-clean", "--merge", "all=dev-clean,test-clean", "--jobs", "1"])
    merged = []
    for subset, chapters in LIBRI.items():
        expect = sorted((f"{spk}-{chap}-{idx:04d}", spk, text.lower(), n)
                        for (spk, chap), utts in chapters.items() for idx, text, n in utts if n is not None)
        entries = read_manifest(out / f"{subset}.tsv")
        assert [(e.id, e.speaker, e.tgt_text, e.n_samples) for e in entries] == expect
        for e in entries:
            assert e.audio.endswith(".flac") and sf.info(e.audio).frames == e.n_samples
        merged += [e.id for e in entries]
    assert [e.id for e in read_manifest(out / "all.tsv")] == merged
    assert read_manifest(out / "dev-clean.tsv")[1].tgt_text == \
        "nor is mister quilter's manner less interesting than his matter"
    _, problems = librispeech.prepare(str(libri_tree), str(tmp_path / "again"), subsets=("dev-clean", "test-clean"))
    assert problems == {"dev-clean: transcript without audio": 1, "test-clean: audio without transcript": 1}


def test_librispeech_bad_merge_and_subset(libri_tree, tmp_path):
    with pytest.raises(ValueError, match="not among --subsets"):
        librispeech.prepare(str(libri_tree), str(tmp_path), subsets=("dev-clean",),
                            merges={"x": ["dev-clean", "test-clean"]})
    with pytest.raises(FileNotFoundError, match="train-clean-100 does not exist"):
        librispeech.prepare(str(libri_tree), str(tmp_path), subsets=("train-clean-100",))
