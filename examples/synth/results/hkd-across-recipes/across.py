"""HKD - CIF over every recipe of the synthesized demo that ran both with the recipe's distillation weights
(ACD 0.05, LRD 0.01) over three or more seeds: per recipe and split, the mean of the per-seed differences,
how many seeds HKD was ahead, and a t interval over the seeds; then all seeds of all recipes together.

    python examples/synth/results/hkd-across-recipes/across.py > examples/synth/results/hkd-across-recipes/table.md

Reads the run summaries (``SYSTEM-sN.txt``, ``WER SPLIT: x`` lines) of the folders below; seeds are paired by
number within a folder. The demo's recipe is one folder of seeds since 1e4f194 plus ``train-readings``' three at
ec72c93 (the same recipe, its arithmetic equal up to float32 rounding).
"""
import re
from pathlib import Path

from fairseq_hkd.generation.significance import t_interval

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
RECIPES = [  # (name, folders)
    ("the demo: two readings, 3,200 updates", ["train-readings", "demo-since-1e4f194"]),
    ("two readings, 6,400 updates", ["train-readings-6400"]),
    ("one reading, no dropout, 4,000 updates", ["abl-4000-drop0"]),
    ("one reading, dropout 0.1, 4,000 updates (204 voices)", ["abl-4000-wide"]),
    ("word units, 28 voices, 4,000 updates", ["abl-4000-word"]),
    ("WordPiece units, 28 voices, 4,000 updates", ["abl-4000-acd005"]),
]
SPLITS = ["test", "heldout", "dev"]


def wers(path: Path) -> dict:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^WER (\w+): ([0-9.]+)$", path.read_text(), re.M)}


def pairs(folder: str):
    for cif in sorted((RESULTS / folder).glob("cif-s*.txt"), key=lambda p: int(re.search(r"s(\d+)", p.name).group(1))):
        if re.fullmatch(r"cif-s\d+\.txt", cif.name) and (cif.parent / cif.name.replace("cif", "hkd")).exists():
            yield wers(cif), wers(cif.parent / cif.name.replace("cif", "hkd"))


def cell(d):
    if len(d) < 2:
        return "" if not d else f"{d[0]:+.2f} (one seed)"
    mean, lo, hi, p = t_interval(d)
    p_text = "p < 0.001" if p < 0.001 else f"p {p:.3f}"
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}], {p_text}; ahead in {sum(x < 0 for x in d)} of {len(d)}"


def main():
    print("| recipe (seeds) | test | heldout | dev |")
    print("|---|---|---|---|")
    every = {s: [] for s in SPLITS}
    for name, folders in RECIPES:
        diffs = {s: [] for s in SPLITS}
        n = 0
        for folder in folders:
            for c, h in pairs(folder):
                n += 1
                for s in SPLITS:
                    if s in c and s in h:
                        diffs[s].append(h[s] - c[s])
        for s in SPLITS:
            every[s] += diffs[s]
        print(f"| {name} ({n}) | " + " | ".join(cell(diffs[s]) for s in SPLITS) + " |")
    print("| every seed above | " + " | ".join(cell(every[s]) for s in SPLITS) + " |")


if __name__ == "__main__":
    main()
