"""docs/RECIPE.md is what the recipe schema generates, covers every key the shipped recipes use, and
`verticalft validate` shows a key's description beside a problem with its value."""

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from verticalft.cli import app
from verticalft.recipe import RecipeError, load_recipe, resolve_raw
from verticalft.recipe_reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "RECIPE.md"


def test_committed_page_is_what_the_schema_generates():
    # Fails when a key, default or description changes without `verticalft reference > docs/RECIPE.md`.
    assert PAGE.read_text(encoding="utf-8") == reference_markdown()
    result = CliRunner().invoke(app, ["reference"])
    assert result.exit_code == 0 and result.output == PAGE.read_text(encoding="utf-8")


def _sections(page: str) -> dict[str, dict[str, str]]:
    """{section path: {key: type cell}} read back from the Markdown tables."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in page.splitlines():
        if line.startswith("## "):
            current = "" if line == "## Top level" else line[3:].strip("`")
            out[current] = {}
        elif current is not None and (row := re.match(r"\| `([^`]+)` \| (.*?) \| ", line)):
            out[current][row[1]] = row[2]
    return out


def test_rows_read_as_written_by_hand():
    sections = _sections(PAGE.read_text(encoding="utf-8"))
    page = PAGE.read_text(encoding="utf-8")
    assert sections["compute"]["timeout_minutes"] == "float (> 0)"
    assert (
        "| `timeout_minutes` | float (> 0) | `120.0` | how long a rank waits at a barrier for the others "
        "(torch's default is 10 minutes) |" in page
    )
    assert (
        "| `concurrency` | list of int (≥ 1) (at least 1 item(s)) | `[1, 8, 32]` | the sweep's concurrent "
        "requests |" in page
    )
    assert "| `teacher` | str | required |" in page  # models.teacher has no default
    assert sections["stages"]["sft"] == "block `stages.sft` or null"
    assert sections["cost"]["compare"] == "mapping str → block `cost.compare.<name>`"
    assert sections["stages.sft"]["lora"] == "block `stages.cpt.lora`"  # one section per block class
    # a `|` inside a cell would end it: escaped
    assert "ddp \\| fsdp2 \\| deepspeed-zero3 \\| a path to your own config" in page


def _keys_covered(
    value: dict[str, Any], section: str, sections: dict[str, dict[str, str]], path: str
) -> None:
    """Every key of `value` is a row of `section`; a block's keys are rows of the section its type names."""
    for key, sub in value.items():
        where = f"{path}.{key}".lstrip(".")
        assert key in sections[section], f"{where}: no row in section '{section}'"
        target = re.search(r"block `([^`]+)`", sections[section][key])
        if target is None:
            continue
        typ = sections[section][key]
        items = sub if isinstance(sub, list) else list(sub.values()) if typ.startswith("mapping") else [sub]
        for item in items:
            if isinstance(item, dict):
                _keys_covered(item, target[1], sections, where)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
@pytest.mark.parametrize("profile", ["full", "tiny", "small"])
def test_every_key_a_shipped_recipe_uses_is_on_the_page(recipe, profile, monkeypatch):
    monkeypatch.chdir(ROOT)
    raw = resolve_raw(ROOT / "recipes" / recipe, profile)  # as written, profile overlays laid on
    _keys_covered(raw, "", _sections(PAGE.read_text(encoding="utf-8")), "")


def _validate(*overrides: str):
    args = ["validate", str(ROOT / "recipes/finance.yaml"), "-p", "tiny"]
    for o in overrides:
        args += ["--set", o]
    return CliRunner().invoke(app, args)


def test_a_bad_value_for_a_described_key_prints_its_description():
    result = _validate("compute.timeout_minutes=0")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # typer.Exit, no crash
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert (
        "compute.timeout_minutes: Input should be greater than 0 — how long a rank waits at a barrier "
        "for the others (torch's default is 10 minutes)" in text
    )


def test_descriptions_only_where_the_key_has_one_and_the_value_is_its_own():
    with pytest.raises(RecipeError) as exc:
        load_recipe(
            ROOT / "recipes/finance.yaml",
            "tiny",
            [
                "stages.distill.kind=seq",  # no description: the message alone
                "stages.bench.concurrency=[4, 0]",  # a list item: the list's description
                "data.sft.path=x.jsonl",
                "data.sft.revision=main",  # a block's own check: not the set's description
            ],
        )
    messages = {p.path: p.message for p in exc.value.problems}
    assert messages["stages.distill.kind"] == "Input should be 'sequence', 'logits' or 'on_policy'"
    assert messages["stages.bench.concurrency.1"] == (
        "Input should be greater than or equal to 1 — the sweep's concurrent requests"
    )
    assert messages["data.sft"] == "Value error, revision: only for hf:// sources (path is x.jsonl)"


def test_unknown_key_inside_a_mapping_of_blocks_gets_a_hint():
    # `cost.compare.<name>` holds ApiPrice blocks; the hint came only for keys of fixed blocks.
    with pytest.raises(RecipeError) as exc:
        load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["cost.compare.gpt4.input_usd=3"])
    messages = {p.path: p.message for p in exc.value.problems}
    assert messages["cost.compare.gpt4.input_usd"] == "unknown key (did you mean 'input_usd_per_m'?)"
