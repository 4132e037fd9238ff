"""Split a model's errors on two readings of the same sentences into those both readings have and those of one
reading only; compare two systems on each part over paired seeds.

The synthesized corpus reads heldout's sentences again in other splits: dev by unseen voices of unseen accents,
and ``dev-known-accents`` (``scripts/reread_split.py``) by the same unseen voice variants in the training accents;
utterance i of each is sentence i. For each model and sentence, every reference word's errors are placed on it by
a Levenshtein alignment (a substitution or deletion on the word, an insertion on the word after it, or on the
last word at the end). An error of one split is *shared* where the same model's hypothesis of the other split
errs on the same reference word, and the split's *own* where it does not; WER = shared + own (% of the reference
words). With ``--data`` the WER of ``--accent-splits`` is also given per accent (the manifest's speaker
``accent+variant``).

Usage:
    python scripts/error_sources.py --names CIF HKD \\
        --baseline R/cif-s{1..11} R2/cif-s{1,2,3} --system R/hkd-s{1..11} R2/hkd-s{1,2,3} \\
        --splits heldout dev --data data/synth6k-wide-r2

Each PREFIX names PREFIX.generate-SPLIT.txt for both ``--splits`` (fairseq-generate output: T-/D- lines), baseline
and system paired by position. Prints each part's mean over seeds per system and system - baseline with a t
interval over the paired seeds (generation/significance.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import editdistance
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_hkd.generation.significance import t_interval  # noqa: E402


def error_positions(ref: Sequence[str], hyp: Sequence[str]) -> np.ndarray:
    """[len(ref)] errors placed on each reference word by one minimum-edit alignment: a substitution or deletion
    on its word, an insertion on the reference word after it (the last word for insertions at the end)."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), dtype=np.int64)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    out = np.zeros(max(n, 1), dtype=np.int64)
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            out[i - 1] += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and d[i, j] == d[i - 1, j] + 1:  # deletion of ref word i - 1
            out[i - 1] += 1
            i -= 1
        else:  # insertion of hyp word j - 1, before ref word i (after the last: on the last)
            out[min(i, n - 1) if n else 0] += 1
            j -= 1
    return out[:n] if n else out[:0]


def read_texts(path: str) -> Dict[str, Tuple[List[str], List[str]]]:
    """fairseq-generate output -> {utterance index: (reference words, hypothesis words)} from its T-/D- lines."""
    refs, hyps = {}, {}
    if not Path(path).is_file():
        raise SystemExit(f"{path} not found: decode the split first (examples/synth/decode.sh --subsets SPLIT)")
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, rest = line.rstrip("\n").partition("\t")
            if key.startswith("T-"):
                refs[key[2:]] = rest.split()
            elif key.startswith("D-"):
                hyps[key[2:]] = rest.partition("\t")[2].split()
    if not refs or sorted(refs) != sorted(hyps):
        raise SystemExit(f"{path}: not a fairseq-generate file with a D- line for every T- line")
    return {i: (refs[i], hyps[i]) for i in refs}


def parts(prefix: str, first: str = "heldout", second: str = "dev") -> Dict[str, float]:
    """One model's errors on two splits that read the same sentences, each split into the errors the other
    split's hypothesis has on the same reference word (*shared*) and the rest (*own*), % of the words."""
    a, b = (read_texts(f"{prefix}.generate-{s}.txt") for s in (first, second))
    if sorted(a) != sorted(b):
        raise SystemExit(f"{prefix}: {first} and {second} have different utterance indices")
    words = shared_a = own_a = shared_b = own_b = 0
    for i in a:
        (r_a, h_a), (r_b, h_b) = a[i], b[i]
        if r_a != r_b:
            raise SystemExit(f"{prefix}: utterance {i} has another sentence on {first} than on {second}: "
                             f"{' '.join(r_a)!r} / {' '.join(r_b)!r}")
        e_a, e_b = error_positions(r_a, h_a), error_positions(r_b, h_b)
        assert e_a.sum() == editdistance.eval(r_a, h_a) and e_b.sum() == editdistance.eval(r_b, h_b), (prefix, i)
        words += len(r_a)
        shared_a += int(e_a[e_b > 0].sum())
        own_a += int(e_a[e_b == 0].sum())
        shared_b += int(e_b[e_a > 0].sum())
        own_b += int(e_b[e_a == 0].sum())
    pct = lambda x: 100.0 * x / words  # noqa: E731
    return {f"{first} WER": pct(shared_a + own_a), f"{first}: shared": pct(shared_a), f"{first}: own": pct(own_a),
            f"{second} WER": pct(shared_b + own_b), f"{second}: shared": pct(shared_b), f"{second}: own": pct(own_b)}


def split_wer(prefix: str, split: str) -> float:
    """WER % of one decoding."""
    texts = read_texts(f"{prefix}.generate-{split}.txt").values()
    return 100.0 * sum(editdistance.eval(r, h) for r, h in texts) / sum(len(r) for r, _ in texts)


def accent_wers(prefix: str, split: str, accents: List[str]) -> Dict[str, float]:
    """WER % of one decoding per accent: ``accents`` [N] the accent of utterance i of the split."""
    errors: Dict[str, int] = {}
    words: Dict[str, int] = {}
    for i, (ref, hyp) in read_texts(f"{prefix}.generate-{split}.txt").items():
        a = accents[int(i)]
        errors[a] = errors.get(a, 0) + editdistance.eval(ref, hyp)
        words[a] = words.get(a, 0) + len(ref)
    return {a: 100.0 * errors[a] / words[a] for a in sorted(words)}


def manifest_accents(data: str, split: str) -> List[str]:
    """The accent (speaker up to ``+``) of each utterance of DATA/SPLIT.tsv, in order."""
    with open(Path(data) / f"{split}.tsv", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if "speaker" not in header:
            raise SystemExit(f"{data}/{split}.tsv has no speaker column")
        col = header.index("speaker")
        return [line.rstrip("\n").split("\t")[col].split("+")[0] for line in f]


def print_row(key: str, x: np.ndarray, y: np.ndarray) -> None:
    diff = y - x
    mean, lo, hi, pval = t_interval(diff)
    p_text = "p < 0.001" if pval < 0.001 else f"p {pval:.3f}"
    print(f"| {key} | {x.mean():.2f} +- {x.std(ddof=1):.2f} | {y.mean():.2f} +- {y.std(ddof=1):.2f} | "
          f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}], {p_text} | {int((diff < 0).sum())} of {len(diff)} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", nargs="+", required=True, help="PREFIX per seed (PREFIX.generate-SPLIT.txt)")
    p.add_argument("--system", nargs="+", required=True, help="PREFIX per seed, paired with --baseline by position")
    p.add_argument("--names", nargs=2, default=["baseline", "system"])
    p.add_argument("--splits", nargs=2, default=["heldout", "dev"], metavar=("FIRST", "SECOND"),
                   help="two splits that read the same sentences (utterance i of each is sentence i)")
    p.add_argument("--data", help="the corpus folder: also the WER per accent of --accent-splits")
    p.add_argument("--accent-splits", nargs="+", default=["dev", "test"])
    p.add_argument("--pool", nargs="+", action="append", default=[], metavar="SPLIT",
                   help="also the per-seed mean of the WERs of these splits (repeat for more pools; two pools: "
                        "also the first minus the second)")
    args = p.parse_args(argv)
    if len(args.baseline) != len(args.system):
        p.error(f"--baseline has {len(args.baseline)} prefixes and --system {len(args.system)}: pair them by seed")
    if len(args.baseline) < 2:
        p.error("a t interval over seeds needs two or more pairs")
    base = [parts(x, *args.splits) for x in args.baseline]
    syst = [parts(x, *args.splits) for x in args.system]
    a, b = args.names
    print(f"{len(base)} paired seeds; % of the reference words; {args.splits[0]} and {args.splits[1]} read the same "
          "sentences; shared: errors the other split's hypothesis has on the same reference word, own: the rest")
    print(f"| part | {a} | {b} | {b} - {a}: mean [95 % t interval], p | {b} lower in |")
    print("|---|---|---|---|---|")
    for key in base[0]:
        print_row(key, np.array([r[key] for r in base]), np.array([r[key] for r in syst]))
    pooled = []
    for pool in args.pool:
        x = np.array([np.mean([split_wer(pre, sp) for sp in pool]) for pre in args.baseline])
        y = np.array([np.mean([split_wer(pre, sp) for sp in pool]) for pre in args.system])
        pooled.append(y - x)
        print_row("mean WER of " + " and ".join(pool), x, y)
    if len(pooled) == 2:
        mean, lo, hi, pval = t_interval(pooled[0] - pooled[1])
        print(f"{b} - {a} on the first pool minus on the second: {mean:+.2f} [{lo:+.2f}, {hi:+.2f}], p {pval:.3f}")
    if args.data:
        print(f"\nWER % per accent (speaker before '+'), {len(base)} paired seeds")
        print(f"| split, accent | {a} | {b} | {b} - {a}: mean [95 % t interval], p | {b} lower in |")
        print("|---|---|---|---|---|")
        for split in args.accent_splits:
            accents = manifest_accents(args.data, split)
            x = [accent_wers(pre, split, accents) for pre in args.baseline]
            y = [accent_wers(pre, split, accents) for pre in args.system]
            for acc in x[0]:
                print_row(f"{split}, {acc}", np.array([r[acc] for r in x]), np.array([r[acc] for r in y]))


if __name__ == "__main__":
    main()
