from verticalft.scoring import parse_number, score_answer, summarise


def test_label_match_is_case_and_punctuation_insensitive_first_line_only():
    assert score_answer(" Dining.\nextra", "dining", "label")
    assert not score_answer("dining room", "dining", "label")


def test_numeric_match_with_tolerance_and_formatting():
    assert score_answer("$29,400", "29400", "number")
    assert score_answer("412.7 million", "412.7", "number")
    assert not score_answer("413.9", "412.7", "number")
    assert not score_answer("n/a", "12", "number")
    assert parse_number("-3.5%") == -3.5


def test_summary_per_task_and_difficulty():
    items = [{"task": "a", "difficulty": 1}, {"task": "a", "difficulty": 3}, {"task": "b", "difficulty": 3}]
    s = summarise(items, [True, False, True])
    assert s["score"] == round(2 / 3, 4) and s["by_task"] == {"a": 0.5, "b": 1.0}
    assert s["by_difficulty"] == {"1": 1.0, "3": 0.5}
