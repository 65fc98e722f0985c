"""The data formats users already have: each read as the canonical rows, early errors.

Expected rows are written by hand (or are what TRL's own `extract_prompt` returns); no training.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verticalft import data
from verticalft.curation.sources import Quarantined, iter_records
from verticalft.data import DataError
from verticalft.recipe import Source

ROOT = Path(__file__).resolve().parents[1]

SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "What is EBITDA?"},
        {"from": "function_call", "value": '{"name": "lookup", "arguments": {"term": "EBITDA"}}'},
        {"from": "observation", "value": "earnings before interest, taxes, D&A"},
        {"from": "gpt", "value": "Earnings before interest, taxes, depreciation and amortisation."},
    ],
    "system": "You are a finance tutor.",
    "tools": '[{"name": "lookup", "description": "glossary", "parameters": {"type": "object"}}]',
}
SHAREGPT_MESSAGES = [
    {"role": "system", "content": "You are a finance tutor."},
    {"role": "user", "content": "What is EBITDA?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"term": "EBITDA"}}}],
    },
    {"role": "tool", "content": "earnings before interest, taxes, D&A"},
    {"role": "assistant", "content": "Earnings before interest, taxes, depreciation and amortisation."},
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Rate for 10-K?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"term": "10-K"}}}]},
        {"role": "tool", "content": "annual report"},
        {"role": "assistant", "content": "An annual report."},
    ],
    "tools": TOOLS,
}  # fmt: skip
ALPACA = {
    "instruction": "Define CET1.",
    "input": "Basel III",
    "output": "Core equity tier 1 capital.",
    "system": "Be exact.",
}
ALPACA_MESSAGES = [
    {"role": "system", "content": "Be exact."},
    {"role": "user", "content": "Define CET1.\nBasel III"},
    {"role": "assistant", "content": "Core equity tier 1 capital."},
]
IMPLICIT = {
    "chosen": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Blue."}],
    "rejected": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Green."}],
}
# what TRL's extract_prompt returns for IMPLICIT (its docstring example)
IMPLICIT_CANONICAL = {
    "prompt": [{"role": "user", "content": "Sky colour?"}],
    "chosen": [{"role": "assistant", "content": "Blue."}],
    "rejected": [{"role": "assistant", "content": "Green."}],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(ds) -> list[dict]:
    """A Dataset's rows without the null keys Arrow adds when it merges message shapes (a system
    turn gets `tool_calls: None` next to a tool-calling turn; chat templates read None as absent)."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        return [clean(x) for x in v] if isinstance(v, list) else v

    return [clean(r) for r in ds.to_list()]


def curated(path: Path, required: tuple[str, ...], **source: object) -> list[dict]:
    """The records curate's reader gives (the canonical fields only)."""
    items = list(iter_records(Source(path=str(path), **source), required))
    assert not [i for i in items if isinstance(i, Quarantined)], items
    return [{k: v for k, v in r.items() if k not in ("id", "license", "source")} for r in items]


@pytest.mark.parametrize(
    "row, messages",
    [
        (SHAREGPT, SHAREGPT_MESSAGES),
        (ALPACA, ALPACA_MESSAGES),
        ({"prompt": "2+2?", "completion": "4"}, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]),
        (
            {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}],
             "completion": [{"role": "assistant", "content": "4"}]},
            [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        ),
    ],
    ids=["sharegpt", "alpaca", "prompt_completion", "prompt_completion_conversational"],
)  # fmt: skip
def test_each_sft_format_reads_as_messages_for_training_and_curation(tmp_path, row, messages):
    path = write_jsonl(tmp_path / "sft.jsonl", [row])
    [rec] = curated(path, ("messages",))
    assert rec["messages"] == messages
    [got] = rows(data.load_set(Source(path=str(path)), "sft"))
    assert got["messages"] == messages
    assert "conversations" not in rec and "instruction" not in rec


def test_openai_rows_keep_system_turns_tool_calls_and_tools(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [OPENAI])
    [got] = rows(data.load_set(Source(path=str(path)), "sft"))
    assert got["messages"] == OPENAI["messages"]
    assert json.loads(got["tools"]) == TOOLS  # a JSON string TRL's SFTTrainer json.loads
    [sharegpt] = rows(data.load_set(Source(path=str(write_jsonl(tmp_path / "s.jsonl", [SHAREGPT]))), "sft"))
    assert json.loads(sharegpt["tools"])[0]["name"] == "lookup"


def test_columns_mapping_renames_the_files_fields(tmp_path):
    given = [{"q": "Define CET1.", "a": "Core equity tier 1 capital.", "sys": "Be exact."}]
    path = write_jsonl(tmp_path / "sft.jsonl", given)
    source = Source(path=str(path), columns={"prompt": "q", "response": "a", "system": "sys"})
    [got] = rows(data.load_set(source, "sft"))
    assert got["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Define CET1."},
        {"role": "assistant", "content": "Core equity tier 1 capital."},
    ]


def test_implicit_prompt_preferences_are_split_with_trls_extract_prompt(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [IMPLICIT])
    [got] = data.load_set(Source(path=str(path)), "preferences").to_list()
    assert {k: got[k] for k in ("prompt", "chosen", "rejected")} == IMPLICIT_CANONICAL
    assert curated(path, ("prompt", "chosen", "rejected")) == [IMPLICIT_CANONICAL]
    explicit = {"prompt": "Define EBITDA.", "chosen": "Earnings before ...", "rejected": "A tax."}
    path = write_jsonl(tmp_path / "explicit.jsonl", [explicit])
    assert data.load_set(Source(path=str(path)), "preferences").to_list() == [explicit]  # as before


def test_sharegpt_preference_rows_read_as_conversational_pairs(tmp_path):
    row = {
        "conversations": [{"from": "human", "value": "Sky colour?"}],
        "chosen": {"from": "gpt", "value": "Blue."},
        "rejected": {"from": "gpt", "value": "Green."},
    }
    path = write_jsonl(tmp_path / "prefs.jsonl", [row])
    assert curated(path, ("prompt", "chosen", "rejected")) == [IMPLICIT_CANONICAL]
    [got] = data.load_set(Source(path=str(path)), "preferences").to_list()
    assert got == IMPLICIT_CANONICAL


def test_gzipped_jsonl_reads_like_jsonl(tmp_path):
    path = tmp_path / "sft.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(ALPACA) + "\n")
    assert curated(path, ("messages",))[0]["messages"] == ALPACA_MESSAGES
    [item] = iter_records(Source(path=str(path)), ("messages",))
    assert item["id"] == "sft:1"  # the same default id as sft.jsonl
    [got] = rows(data.load_set(Source(path=str(path)), "sft"))
    assert got["messages"] == ALPACA_MESSAGES


def test_an_unusable_row_names_file_line_what_is_missing_and_the_formats_tried(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [ALPACA, {"question": "Define CET1.", "answer": "Capital."}])
    with pytest.raises(DataError) as exc:
        data.load_set(Source(path=str(path)), "sft")
    message = str(exc.value)
    assert message.startswith(f"{path}:2: missing field 'messages'")
    for name in ("messages", "sharegpt", "alpaca", "prompt_completion"):
        assert name in message
    [q] = [i for i in iter_records(Source(path=str(path)), ("messages",)) if isinstance(i, Quarantined)]
    assert (q.line, q.error) == (2, message.split(": ", 1)[1])


def validate(tmp_path: Path, sft: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "verticalft.cli", "validate", "recipes/finance.yaml", "-p", "tiny",
         "--set", f"data.sft.path={sft}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.slow  # two `verticalft validate` processes: 21 CPU-seconds
def test_validate_says_the_detected_format_and_exits_2_on_unusable_rows(tmp_path):
    ok = validate(tmp_path, write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT] * 3))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sharegpt" in ok.stdout
    bad_rows = [SHAREGPT, {"question": "q", "answer": "a"}, {"text": "t"}]
    bad = validate(tmp_path, write_jsonl(tmp_path / "bad.jsonl", bad_rows))
    out = bad.stdout + bad.stderr
    assert bad.returncode == 2, out
    assert "Traceback" not in out
    err = bad.stderr.replace("\n", " ")
    assert "bad.jsonl:2: missing field 'messages'" in err and "bad.jsonl:3:" in err
    assert "alpaca" in err


def _run_curate(tmp_path: Path, sft: Path) -> subprocess.CompletedProcess:
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--runs-dir", str(tmp_path / "runs")]
    args += ["--only", "curate", "--set", f"data.sft.path={sft}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


@pytest.mark.slow  # a `verticalft run` process: 10 CPU-seconds
def test_run_stops_before_any_work_on_a_set_no_format_fits(tmp_path):
    """Before: curate kept 0 rows of it and succeeded; sft then died after curate and CPT."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n{"bar": "x"}\n')
    proc = _run_curate(tmp_path, bad)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert f"data.sft: no usable row in the first 50 of {bad}" in " ".join(out.split())
    assert not (tmp_path / "runs/finance/tiny/curate").exists()  # nothing ran


@pytest.mark.slow  # a `verticalft run` process through curate: 16 CPU-seconds
def test_curate_fails_when_a_set_keeps_no_row_and_says_why(tmp_path):
    """Readable rows that every record rule drops (empty answers): curate stops, naming the reason."""
    empty = tmp_path / "empty_answers.jsonl"
    row = {"messages": [{"role": "user", "content": "Category?"}, {"role": "assistant", "content": " "}]}
    empty.write_text((json.dumps(row) + "\n") * 3)
    proc = _run_curate(tmp_path, empty)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out[-2000:]
    assert f"data.sft ({empty}) kept 0 rows: 3 × dropped: empty_response" in out
    assert (tmp_path / "runs/finance/tiny/curate/quarantine.jsonl").is_file()  # written before stopping
