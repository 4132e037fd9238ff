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
