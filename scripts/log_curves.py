"""Per-epoch validation curves from fairseq-train logs, as one TSV.

Usage::

    python scripts/log_curves.py exp/abl/cif-s1/train.log exp/abl/hkd-s1/train.log \\
        --fields fire_acc tf_ter acd_acc acd_loss lrd_loss clip > curves.tsv

Rows: run (the log's directory name), epoch, updates, then the requested fields of that epoch's
validation line (``| heldout | epoch NNN | valid on ...``); ``clip`` is the fraction of updates
clipped in that epoch's training summary line (``| train | epoch NNN | ... | clip ...``). A field a
log does not have is left empty (CIF logs have no acd_acc).
"""
import argparse
import os
import re
import sys
from typing import Dict, List

_VALID = re.compile(r"\| (\S+) \| epoch (\d+) \| valid on ")
_TRAIN = re.compile(r"\| train \| epoch (\d+) \| ")


def _fields(line: str) -> Dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"\| ([a-z_]+) ([-0-9.e]+)(?= \||$)", line))


def curves(path: str, names: List[str]) -> List[List[str]]:
    valid: Dict[int, Dict[str, str]] = {}
    train: Dict[int, Dict[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _VALID.search(line)
            if m:
                valid[int(m.group(2))] = _fields(line)
                continue
            m = _TRAIN.search(line)
            if m:
                train[int(m.group(1))] = _fields(line)
    run = os.path.basename(os.path.dirname(os.path.abspath(path)))
    rows = []
    for epoch in sorted(valid):
        v, t = valid[epoch], train.get(epoch, {})
        rows.append([run, str(epoch), v.get("num_updates", "")] +
                    [(t if name == "clip" else v).get(name, "") for name in names])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--fields", nargs="+", default=["fire_acc", "tf_ter", "acd_acc", "lrd_loss", "clip"])
    args = p.parse_args()
    print("\t".join(["run", "epoch", "updates"] + args.fields))
    for path in args.logs:
        if not os.path.isfile(path):
            sys.exit(f"log_curves: no log {path}")
        for row in curves(path, args.fields):
            print("\t".join(row))


if __name__ == "__main__":
    main()
