import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from verticalft.sample_data import luhn_complete

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["finance", "real_estate"]


def _builder(domain):
    spec = importlib.util.spec_from_file_location(
        f"build_{domain}", ROOT / "data_pipelines" / domain / "build_sample.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("domain", DOMAINS)
def test_committed_sample_is_what_the_builder_writes(domain, tmp_path):
    _builder(domain).main(tmp_path)
    for f in sorted((ROOT / "data_pipelines" / domain / "sample").glob("*.jsonl")):
        if f.name == "eval_rephrased.jsonl":  # rephrase_eval.py's (test below)
            continue
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("domain", DOMAINS)
def test_sample_shape_noise_and_no_eval_leak(domain):
    d = ROOT / "data_pipelines" / domain / "sample"
    corpus, labels = _rows(d / "corpus.jsonl"), _rows(d / "noise_labels.jsonl")
    kinds = Counter(r["kind"] for r in labels)
    assert set(kinds) == {
        "exact_duplicate",
        "near_duplicate",
        "boilerplate",
        "boilerplate_lines",
        "non_english",
        "pii",
        "too_short",
        "stale_date",
        "license",
    }
    ids = {r["id"] for r in corpus}
    assert len(ids) == len(corpus) and {r["id"] for r in labels} <= ids
    by_id = {r["id"]: r for r in corpus}
    for lab in labels:
        if lab["kind"] == "exact_duplicate":
            assert by_id[lab["id"]]["text"] == by_id[lab["detail"]]["text"]
        if lab["kind"] == "pii":
            assert all(v in by_id[lab["id"]]["text"] for v in lab["detail"].values())
    evals = _rows(d / "eval.jsonl")
    sft_prompts = {r["messages"][0]["content"] for r in _rows(d / "sft.jsonl")}
    assert not sft_prompts & {e["prompt"] for e in evals}
    assert {e["difficulty"] for e in evals} == {1, 2, 3} and {e["kind"] for e in evals} == {"label", "number"}
    prefs = _rows(d / "preferences.jsonl")
    assert all(p["chosen"][0]["content"] != p["rejected"][0]["content"] for p in prefs)
    assert sum(f.stat().st_size for f in d.iterdir()) < 3_000_000


def test_planted_cards_pass_luhn():
    card = luhn_complete("453201511283036")
    digits = [int(c) for c in card]
    total = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    assert total % 10 == 0


def test_the_rephrased_finance_eval_asks_the_same_items_in_other_words(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "rephrase", ROOT / "data_pipelines/finance/rephrase_eval.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sample = ROOT / "data_pipelines/finance/sample"
    (tmp_path / "eval.jsonl").write_text((sample / "eval.jsonl").read_text())
    mod.main(tmp_path)
    # the shipped file is the script's output
    assert (tmp_path / "eval_rephrased.jsonl").read_text() == (sample / "eval_rephrased.jsonl").read_text()
    before = [json.loads(x) for x in (sample / "eval.jsonl").read_text().splitlines()]
    after = [json.loads(x) for x in (sample / "eval_rephrased.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if k != "prompt"}  # noqa: E731
    assert [drop(r) for r in after] == [drop(r) for r in before]
    for old, new in zip(before, after, strict=True):
        assert old["prompt"] != new["prompt"]
        # every figure and name the question needs is still in it (by hand: the numbers)
        assert sorted(re.findall(r"\d+(?:\.\d+)?", old["prompt"])) == sorted(
            re.findall(r"\d+(?:\.\d+)?", new["prompt"])
        )
    by_hand = "Operating costs came to $70M against net revenue of $74M. How much operating income is that, in millions of dollars?\nAnswer:"
    assert after[0]["prompt"] == by_hand and after[0]["answer"] == "4"
    with pytest.raises(ValueError, match="fin-x: prompt does not match the change template"):
        mod.rephrase({"id": "fin-x", "task": "change", "prompt": "Up or down?"})
