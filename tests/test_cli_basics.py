"""The top-level command: --version and the user-facing --help (issue 25)."""

import re
from pathlib import Path

from typer.testing import CliRunner

from verticalft.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_version_prints_the_package_version():
    # expected: the version pyproject.toml declares (what `pip show verticalft` reports)
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"verticalft {declared}\n"
