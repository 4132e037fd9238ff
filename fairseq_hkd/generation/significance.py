"""Paired comparison of two systems' WER on the same test utterances (paired bootstrap).

Usage::

    python -m fairseq_hkd.generation.significance \\
        --baseline exp/abl/cif-s1/decode-test/generate-test.txt exp/abl/cif-s2/decode-test/generate-test.txt \\
        --system   exp/abl/hkd-s1/decode-test/generate-test.txt exp/abl/hkd-s2/decode-test/generate-test.txt

Inputs are fairseq-generate result files (``T-ID`` reference and ``D-ID`` detokenised hypothesis
lines, the strings fairseq's WER scorer compares). Word errors are recounted per utterance with
``editdistance`` and checked against the file's own ``WER:`` line, so a file this tool
misreads is an error, not a wrong number.

Several files per side are seeds of one system: files are paired in the order given (seed k of the
baseline with seed k of the system), per-seed differences are printed, and the pooled statistic
is the difference of the seed-averaged WERs. The bootstrap resamples *utterances* (the test set is
the sample) with replacement, ``n_resamples`` times; in each resample every seed of both systems
is scored on the same utterances, so the interval reflects the test set's sampling, paired across
systems, with seed-to-seed variation averaged in. Reported: the observed difference
``WER(system) - WER(baseline)`` in points, its 95 % percentile interval and the fraction of
resamples in which the system is not better (a one-sided bootstrap p-value). With three or more paired
seeds also a t interval over the per-seed differences (the seeds are the sample: it counts how much a
system varies from seed to seed, which the bootstrap over utterances averages away) and its two-sided p.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["UtteranceErrors", "read_generate", "paired_bootstrap", "BootstrapResult", "t_interval", "cli_main"]

_WER_LINE = re.compile(r"WER: ([0-9.]+)")


@dataclass
class UtteranceErrors:
    """Per-utterance word errors of one decoding: ids [N] (sorted), errors [N], ref_words [N],
    hyp_words [N] (words of the hypothesis; None where not read)."""

    path: str
    ids: List[str]
    errors: np.ndarray
    ref_words: np.ndarray
    reported_wer: Optional[float] = None
    hyp_words: Optional[np.ndarray] = None

    @property
    def wer(self) -> float:
        return 100.0 * float(self.errors.sum()) / max(1, int(self.ref_words.sum()))

    @property
    def length_accuracy(self) -> float:
        """% of utterances whose hypothesis has as many words as the reference (for a CIF model
        with word units: how often decoding chose the right count)."""
        if self.hyp_words is None:
            raise ValueError(f"{self.path}: hypothesis lengths were not read")
        return 100.0 * float((self.hyp_words == self.ref_words).mean())


def read_generate(path: str, check: bool = True) -> UtteranceErrors:
    """Parse a fairseq-generate result file into per-utterance word errors.

    With ``check`` the recounted corpus WER must equal the file's ``WER:`` line to its two
    printed decimals (raises ValueError naming the file otherwise)."""
    import editdistance

    refs: Dict[str, str] = {}
    hyps: Dict[str, str] = {}
    reported = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("T-"):
                key, _, text = line.partition("\t")
                refs[key[2:]] = text
            elif line.startswith("D-"):
                parts = line.split("\t")
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: a D- line without a score field")
                hyps[parts[0][2:]] = parts[2] if len(parts) > 2 else ""
            else:
                m = _WER_LINE.search(line)
                if m:
                    reported = float(m.group(1))
    if not refs:
        raise ValueError(f"{path}: no T- lines: not a fairseq-generate result file")
    missing = sorted(set(refs) - set(hyps))
    if missing:
        raise ValueError(f"{path}: {len(missing)} references without a D- hypothesis (first: {missing[0]})")
    ids = sorted(refs, key=lambda k: (len(k), k))
    errors = np.array([editdistance.eval(refs[i].split(), hyps[i].split()) for i in ids], dtype=np.int64)
    ref_words = np.array([len(refs[i].split()) for i in ids], dtype=np.int64)
    hyp_words = np.array([len(hyps[i].split()) for i in ids], dtype=np.int64)
    out = UtteranceErrors(path, ids, errors, ref_words, reported, hyp_words)
    if check and reported is not None and abs(round(out.wer, 2) - reported) > 0.011:
        raise ValueError(f"{path}: recounted WER {out.wer:.2f} differs from the file's WER line {reported:.2f}")
    return out


@dataclass
class BootstrapResult:
    delta: float            # WER(system) - WER(baseline), points, seed-averaged
    low: float              # 95 % percentile interval of delta
    high: float
    p_not_better: float     # fraction of resamples with delta >= 0
    per_seed: List[float]   # observed per-seed differences
    baseline_wer: float     # seed-averaged WERs
    system_wer: float
    n_utterances: int
    n_resamples: int

    def seed_t_interval(self, level: float = 0.95) -> Optional[Tuple[float, float, float, float]]:
        """(mean, low, high, two-sided p) of a t interval over the per-seed differences; None below 3 seeds."""
        return t_interval(self.per_seed, level) if len(self.per_seed) >= 3 else None


def t_interval(differences: Sequence[float], level: float = 0.95) -> Tuple[float, float, float, float]:
    """(mean, low, high, two-sided p): Student's t interval of the mean of >= 2 paired differences."""
    from scipy.stats import t as student_t

    d = np.asarray(differences, dtype=np.float64)
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))
    if se == 0.0:
        return mean, mean, mean, 0.0 if mean != 0.0 else 1.0
    q = float(student_t.ppf(0.5 + level / 2, d.size - 1))
    p = float(2 * student_t.sf(abs(mean) / se, d.size - 1))
    return mean, mean - q * se, mean + q * se, p


def _stack(runs: Sequence[UtteranceErrors], ids: List[str]) -> np.ndarray:
    """[S, N] errors of S runs on the common utterance order ``ids``."""
    return np.stack([r.errors for r in runs])


def paired_bootstrap(baseline: Sequence[UtteranceErrors], system: Sequence[UtteranceErrors],
                     n_resamples: int = 10000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
    """Paired bootstrap over utterances of WER(system) - WER(baseline), seeds averaged.

    ``baseline`` and ``system`` hold S_a >= 1 and S_b >= 1 runs on the same utterances (same ids and
    references). Per-seed differences pair run k with run k (needs S_a == S_b)."""
    if not baseline or not system:
        raise ValueError("need at least one run per side")
    first = baseline[0]
    for r in list(baseline) + list(system):
        if r.ids != first.ids or not np.array_equal(r.ref_words, first.ref_words):
            raise ValueError(f"{r.path} and {first.path} do not decode the same utterances / references")
    ea, eb = _stack(baseline, first.ids), _stack(system, first.ids)  # [S_a, N], [S_b, N]
    words = first.ref_words  # [N]
    n = words.shape[0]

    def mean_wer(e: np.ndarray, w_total) -> np.ndarray:
        return 100.0 * e.sum(axis=-1).mean(axis=0) / w_total

    delta = float(mean_wer(eb, words.sum()) - mean_wer(ea, words.sum()))
    rng = np.random.default_rng(seed)
    # counts[r, i]: how often utterance i is drawn in resample r (multinomial = draws with replacement)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)  # [R, N]
    w_total = counts @ words  # [R]
    wa = 100.0 * (counts @ ea.T).mean(axis=1) / w_total  # [R]
    wb = 100.0 * (counts @ eb.T).mean(axis=1) / w_total
    d = wb - wa
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(d, [alpha, 1.0 - alpha])
    per_seed = [float(b.wer - a.wer) for a, b in zip(baseline, system)] if len(baseline) == len(system) else []
    return BootstrapResult(delta, float(low), float(high), float((d >= 0).mean()), per_seed,
                           float(np.mean([r.wer for r in baseline])), float(np.mean([r.wer for r in system])),
                           n, n_resamples)


def format_result(res: BootstrapResult, name_a: str = "baseline", name_b: str = "system") -> str:
    seeds = ", ".join(f"{x:+.2f}" for x in res.per_seed)
    return (f"{name_b} - {name_a}: {res.delta:+.2f} WER points ({res.system_wer:.2f} vs {res.baseline_wer:.2f}, "
            f"seed-averaged); 95 % CI [{res.low:+.2f}, {res.high:+.2f}] (paired bootstrap over "
            f"{res.n_utterances} utterances, {res.n_resamples} resamples); P(not better) = {res.p_not_better:.3f}"
            + (f"; per-seed differences: {seeds}" if seeds else "")
            + ("; t over the {} seeds: {:+.2f} [{:+.2f}, {:+.2f}], p = {:.3f}".format(len(res.per_seed), *t)
               if (t := res.seed_t_interval()) else ""))


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", nargs="+", required=True, help="generate-SUBSET.txt files of the baseline (one per seed)")
    p.add_argument("--system", nargs="+", required=True, help="generate-SUBSET.txt files of the system (same seed order)")
    p.add_argument("--names", nargs=2, default=("baseline", "system"), metavar=("A", "B"))
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        a = [read_generate(f) for f in args.baseline]
        b = [read_generate(f) for f in args.system]
        res = paired_bootstrap(a, b, args.resamples, args.seed)
    except (OSError, ValueError) as e:
        sys.exit(f"significance: {e}")
    print(format_result(res, *args.names))


if __name__ == "__main__":
    cli_main()
