import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _cwd_root(monkeypatch):
    """Recipe data paths resolve from the project root, as when run through make."""
    monkeypatch.chdir(ROOT)
