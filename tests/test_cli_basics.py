"""The top-level command: --version, the user-facing --help, the library's log lines."""

import logging
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


def test_library_log_lines_show_on_the_console_as_they_were_printed(monkeypatch):
    # A stage run in the CLI's process logs its progress (`verticalft run` showed these as bare
    # prints): the line must reach the user whole, unwrapped, brackets literal, and debug must not.
    import verticalft.plan as plan

    line = "  launching: " + "accelerate " * 20 + "[repeats disagree]"
    real = plan.plan_recipe

    def logging_plan(recipe):
        logging.getLogger("verticalft.pipeline").info(line)
        logging.getLogger("verticalft.pipeline").debug("internal detail")
        return real(recipe)

    monkeypatch.setattr(plan, "plan_recipe", logging_plan)
    result = CliRunner().invoke(app, ["plan", str(ROOT / "recipes/finance.yaml"), "-p", "tiny"])
    assert result.exit_code == 0, result.output
    assert line + "\n" in result.output and len(line) > 160  # the console's width off a terminal
    assert "internal detail" not in result.output
