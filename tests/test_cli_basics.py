"""The top-level command: --version and the user-facing --help."""

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


def test_top_level_help_is_for_users_and_names_the_main_commands():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})  # no wrapping
    assert result.exit_code == 0
    assert "Thin: parse, call, print" not in result.output  # the developer docstring
    assert "Turn an open base model into a cheap, strong domain model" in result.output
    assert "Main commands: validate (check a recipe), plan (cost before anything runs), run" in result.output
    assert "verticalft run recipes/finance.yaml -p tiny" in result.output
