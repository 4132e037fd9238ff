"""The recipes' shell scripts parse, and their usage headers are comments.

A header line that lost its ``#`` is a command bash runs before ``set -euo pipefail`` (so it
does not stop the script): it broke decode.sh, and with it ``make demo``'s table, once
(2026-12-03). ``bash -n`` does not see it; this check does.
"""
import glob
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(p for p in glob.glob(os.path.join(REPO, "examples", "**", "*.sh"), recursive=True)
                 + glob.glob(os.path.join(REPO, "scripts", "*.sh"))
                 if "set -euo pipefail" in open(p, encoding="utf-8").read())


def test_scripts_found():
    names = {os.path.relpath(p, REPO) for p in SCRIPTS}
    assert {"examples/synth/run.sh", "examples/synth/decode.sh", "examples/synth/ablation.sh"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: os.path.relpath(p, REPO))
def test_header_is_comments_and_script_parses(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, start=1):
        if line.startswith("set -euo pipefail"):
            break
        assert line.strip() == "" or line.lstrip().startswith("#"), \
            f"{os.path.relpath(path, REPO)}:{n}: a header line that is not a comment runs as a command: {line!r}"
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_summarize_reports_the_last_validation_and_checkpoint_best_s(tmp_path):
    """summarize.sh: ``heldout fire_acc`` is the last validation's, ``... of checkpoint_best`` that of the
    last validation whose loss was the best so far (the epoch checkpoint_best.pt was saved at), here the
    second of three."""
    lines = [(1, 3.0, 3.0, 40.0, 500), (2, 2.0, 2.0, 80.0, 1000), (3, 2.5, 2.0, 90.0, 1200)]
    log = "".join(f"2026-12-06 | INFO | heldout | epoch {e:03d} | valid on 'heldout' subset | ce_loss 9.9 | loss {loss} "
                  f"| fire_acc {acc} | num_updates {n} | best_loss {best}\n" for e, loss, best, acc, n in lines)
    (tmp_path / "train.log").write_text(log)
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", "synth", "summarize.sh"), "--exp", str(tmp_path),
                           "--commit", "abc"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "heldout fire_acc: 90.0\n" in proc.stdout
    assert "heldout fire_acc of checkpoint_best: 80.0 (updates 1000)\n" in proc.stdout
