"""Paired bootstrap of WER differences (fairseq_hkd.generation.significance)."""
import itertools

import numpy as np
import pytest

from fairseq_hkd.generation.significance import UtteranceErrors, cli_main, paired_bootstrap, read_generate


def _write(path, pairs, wer_line=None):
    lines = []
    for i, (ref, hyp) in enumerate(pairs):
        lines += [f"T-{i}\t{ref}", f"H-{i}\t-1.0\t{hyp}", f"D-{i}\t-1.0\t{hyp}", f"P-{i}\t-0.5"]
    if wer_line is not None:
        lines.append(f"Generate test with beam=5: WER: {wer_line:.2f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


PAIRS = [("a b c d", "a x c d"),        # 1 substitution
         ("e f", "e f g"),              # 1 insertion
         ("h i j", ""),                 # 3 deletions (empty hypothesis)
         ("k", "k")]                    # 0


def test_read_generate_counts_errors_per_utterance_by_hand(tmp_path):
    # hand count: 1 + 1 + 3 + 0 = 5 errors over 4 + 2 + 3 + 1 = 10 words = 50 %
    run = read_generate(_write(tmp_path / "g.txt", PAIRS, 50.0))
    assert run.ids == ["0", "1", "2", "3"]
    assert run.errors.tolist() == [1, 1, 3, 0] and run.ref_words.tolist() == [4, 2, 3, 1]
    assert run.wer == pytest.approx(50.0)
    # lengths 4/4, 3/2, 0/3, 1/1: two of four hypotheses have the reference's word count
    assert run.hyp_words.tolist() == [4, 3, 0, 1] and run.length_accuracy == pytest.approx(50.0)


def test_read_generate_refuses_a_file_whose_wer_line_disagrees(tmp_path):
    with pytest.raises(ValueError, match="differs from the file's WER line"):
        read_generate(_write(tmp_path / "g.txt", PAIRS, 40.0))


def test_identical_systems_give_a_zero_interval(tmp_path):
    run = read_generate(_write(tmp_path / "g.txt", PAIRS))
    res = paired_bootstrap([run], [run], n_resamples=500)
    assert res.delta == 0 and res.low == 0 and res.high == 0 and res.p_not_better == 1.0


def test_unpaired_runs_are_an_error(tmp_path):
    a = read_generate(_write(tmp_path / "a.txt", PAIRS))
    b = read_generate(_write(tmp_path / "b.txt", PAIRS[:3]))
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap([a], [b])


def _run(errors, words, name):
    return UtteranceErrors(name, [str(i) for i in range(len(words))], np.array(errors), np.array(words))


def test_bootstrap_matches_exhaustive_resampling_with_seeds_averaged():
    # 4 utterances: all 4^4 = 256 ordered resamples enumerated give the exact bootstrap distribution
    words = [5, 3, 8, 2]
    base = [_run([2, 1, 3, 0], words, "a1"), _run([1, 2, 2, 1], words, "a2")]
    syst = [_run([1, 1, 1, 0], words, "b1"), _run([2, 0, 3, 0], words, "b2")]
    exact = []
    for idx in itertools.product(range(4), repeat=4):
        w = sum(words[i] for i in idx)
        wa = np.mean([100.0 * sum(r.errors[i] for i in idx) / w for r in base])
        wb = np.mean([100.0 * sum(r.errors[i] for i in idx) / w for r in syst])
        exact.append(wb - wa)
    exact = np.array(exact)
    res = paired_bootstrap(base, syst, n_resamples=200000, seed=3)
    # observed difference by hand: base (6/18, 6/18) -> 33.33; system (3/18, 5/18) -> 22.22
    assert res.delta == pytest.approx(100 * 4 / 18 - 100 * 6 / 18)
    assert res.per_seed == pytest.approx([100 * (3 - 6) / 18, 100 * (5 - 6) / 18])
    assert res.p_not_better == pytest.approx((exact >= 0).mean(), abs=0.005)
    lo, hi = np.quantile(exact, [0.025, 0.975])
    assert res.low == pytest.approx(lo, abs=1.0) and res.high == pytest.approx(hi, abs=1.0)


def test_t_interval_over_seeds_by_hand():
    """Per-seed differences 1..5 (the textbook case): mean 3, sd sqrt(2.5), se 0.7071, t(0.975, 4) = 2.7764 from
    the table -> [1.037, 4.963]; t = 4.243 on 4 degrees of freedom: two-sided p = 0.0132. Fewer than three seeds:
    no interval. And the CLI line carries it."""
    from fairseq_hkd.generation.significance import BootstrapResult, format_result

    res = BootstrapResult(3.0, 0.0, 0.0, 0.0, [1.0, 2.0, 3.0, 4.0, 5.0], 10.0, 13.0, 100, 10)
    mean, lo, hi, p = res.seed_t_interval()
    assert mean == 3.0 and lo == pytest.approx(3 - 2.7764 * 0.70711, abs=1e-3)
    assert hi == pytest.approx(3 + 2.7764 * 0.70711, abs=1e-3) and p == pytest.approx(0.0132, abs=2e-4)
    assert "t over the 5 seeds: +3.00 [+1.04, +4.96], p = 0.013" in format_result(res)
    assert BootstrapResult(3.0, 0.0, 0.0, 0.0, [1.0, 2.0], 10.0, 13.0, 100, 10).seed_t_interval() is None


def test_cli_prints_one_line_and_bad_files_give_a_one_line_error(tmp_path, capsys):
    a = _write(tmp_path / "a.txt", PAIRS, 50.0)
    b = _write(tmp_path / "b.txt", [(r, r) for r, _ in PAIRS], 0.0)
    cli_main(["--baseline", a, "--system", b, "--names", "CIF", "HKD", "--resamples", "1000"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("HKD - CIF: -50.00 WER points")
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit, match=r"empty.txt: no T- lines"):
        cli_main(["--baseline", a, "--system", str(empty)])
