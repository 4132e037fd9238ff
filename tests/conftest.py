"""Shared pytest fixtures: the tiny synthesized corpus (built once per session) and helpers."""
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from corpus import make_tiny_corpus`

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Directory of the running interpreter (the venv's bin/, where fairseq-train lives)."""
    return VENV_BIN


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """8 train + 4 valid utterances, char units (read-only: copy it before changing anything)."""
    from corpus import make_tiny_corpus

    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))
