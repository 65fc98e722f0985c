"""Eval-stage logic without models: scoring kinds, item checks, retention and gates."""

import json

import pytest

from verticalft.data import DataError
from verticalft.recipe import Gates, Source
from verticalft.scoring import choice_letter, load_items, score_answer, score_items
from verticalft.stages.eval import check_gates, retention


def test_every_kind_scores_what_it_should():
    assert score_answer("Dining\nmore text", "dining", "label")
    assert not score_answer("dining out", "dining", "label")
    assert score_answer("  net  income rose ", "net income rose", "exact")
    assert not score_answer("Net income rose", "net income rose", "exact")  # exact is case-sensitive
    assert score_answer("$1,250.0 million", "1250", "number")
    assert not score_answer("1,260", "1250", "number")
    assert score_answer("1251", "1250", "number", tolerance=0.001)  # within 0.1%
    choices = ["Equity", "Liability", "Revenue"]
    assert score_answer("(B) because it is owed", "B", "choice", choices=choices)
    assert score_answer("liability", "B", "choice", choices=choices)  # the option's text
    assert not score_answer("C", "B", "choice", choices=choices)
    assert not score_answer("D", "D", "choice", choices=choices)  # not an option
    assert choice_letter("b) Liability", choices) == "B"


def test_score_items_uses_each_items_kind():
    items = [
        {"answer": "4", "kind": "number"},
        {"answer": "dining"},  # label by default
        {"answer": "A", "kind": "choice", "choices": ["x", "y"]},
    ]
    assert score_items(items, ["4.0", "Dining", "y"]) == [True, True, False]


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) if isinstance(r, dict) else r for r in rows) + "\n")
    return Source(path=str(path))


def test_bad_eval_rows_name_file_and_line(tmp_path):
    good = {"prompt": "p", "answer": "a"}
    with pytest.raises(DataError, match=r"eval.jsonl:2: unknown kind 'regex'"):
        load_items(_write(tmp_path / "eval.jsonl", [good, {**good, "kind": "regex"}]))
    with pytest.raises(DataError, match=r"eval.jsonl:3: missing field\(s\) answer"):
        load_items(_write(tmp_path / "eval.jsonl", [good, good, {"prompt": "p"}]))
    with pytest.raises(DataError, match=r"eval.jsonl:1: a `choice` item needs its options"):
        load_items(_write(tmp_path / "eval.jsonl", [{**good, "kind": "choice"}]))
    with pytest.raises(DataError, match=r"eval.jsonl:2: not valid JSON"):
        load_items(_write(tmp_path / "eval.jsonl", [good, "{oops"]))
    items = load_items(_write(tmp_path / "eval.jsonl", [good, {**good, "answer": 7}]), max_items=2)
    assert [it["kind"] for it in items] == ["label", "label"] and items[1]["answer"] == "7"


def test_retention_is_student_over_teacher_per_task():
    teacher = {"score": 0.5, "by_task": {"a": 0.8, "b": 0.0}}
    student = {"score": 0.4, "by_task": {"a": 0.4, "b": 0.2}}
    assert retention(student, teacher) == {"overall": 0.8, "by_task": {"a": 0.5, "b": None}}


def test_gates_name_what_fell_short():
    scores = {
        "base": {"role": "base", "domain": {"score": 0.0}, "general": {"score": 0.6}},
        "dpo": {"role": "teacher", "domain": {"score": 0.42}, "general_retention": 0.5},
        "student-s": {"role": "student", "domain": {"score": 0.39}, "retention": {"overall": 0.93}},
        "student-m": {"role": "student", "domain": {"score": 0.2}, "retention": {"overall": 0.48}},
    }
    failed = check_gates(
        Gates(min_retention=0.9, min_score=0.5, min_general_retention=0.8), scores, "dpo", "base"
    )
    assert len(failed) == 3
    assert any("student-m" in f and "0.480" in f and "min_retention 0.9" in f for f in failed)
    assert not any("student-s" in f for f in failed)
    assert any("min_score 0.5" in f for f in failed) and any("general" in f for f in failed)
    assert check_gates(Gates(), scores, "dpo", "base") == []


def test_choice_answer_as_an_mmlu_option_index(tmp_path):
    # Regression: MMLU (and HF `cais/mmlu`) store the answer as the 0-based index of the right
    # option; `answer: 1` was read as the text "1" and every prediction scored 0.
    choices = ["Equity", "Liability", "Revenue", "Expense"]
    rows = [
        {"prompt": "q1", "answer": 1, "kind": "choice", "choices": choices},  # B, Liability
        {"prompt": "q2", "answer": 0, "kind": "choice", "choices": choices},  # A, Equity
        {"prompt": "q3", "answer": 3, "kind": "choice", "choices": choices},  # D, Expense
        {"prompt": "q4", "answer": "C", "kind": "choice", "choices": choices},  # a letter stays
    ]
    items = load_items(_write(tmp_path / "eval.jsonl", rows))
    assert [it["answer"] for it in items] == ["B", "A", "D", "C"]
    # by hand: "B" right, "Liability" (B) wrong for A, "(D) Expense" right, "A" wrong for C
    assert score_items(items, ["B", "Liability", "(D) Expense", "A"]) == [True, False, True, False]
    # the raw rows (an index, not yet loaded) score the same
    assert score_items(rows, ["B", "Liability", "(D) Expense", "A"]) == [True, False, True, False]
    with pytest.raises(DataError, match=r"eval.jsonl:1: choice answer index 4 is not an option"):
        load_items(_write(tmp_path / "eval.jsonl", [{**rows[0], "answer": 4}]))
