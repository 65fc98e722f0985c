"""Unit tests of the curation pieces the stage wires together: language id, relevance, the
field-aware SFT/DPO rules, the filter chain and its audit funnel, and the recipe's curate schema."""

import pytest
from sample_helpers import ROOT

from verticalft.curation import langid, records, relevance
from verticalft.curation.audit import AuditError, Funnel
from verticalft.curation.chain import build_chain, run_chain
from verticalft.curation.filters import rules_for
from verticalft.curation.quality import STRUCTURED_RULES
from verticalft.recipe import CurateStage, RecipeError, load_recipe

EN = "The company reported quarterly revenue of 4.2 billion dollars and raised its full-year guidance."
DE = "Das Unternehmen meldete einen Quartalsumsatz von 4,2 Milliarden Dollar und hob die Prognose an."


def test_language_id_uses_the_bundled_model():
    assert langid.detect(EN)[0] == "en"
    assert langid.detect(DE)[0] == "de"
    assert langid.language_reason(EN) is None
    assert langid.language_reason(DE) == "language_de"
    assert langid.language_reason(DE, langid.LanguageRules(languages=("en", "de"))) is None


def test_language_id_reads_past_a_leading_table():
    table = "\n".join(f"{i} | 1,234 | 5,678 | 9.1%" for i in range(10))
    assert langid.detect(table + "\n" + EN * 3)[0] == "en"


def test_a_statement_the_model_is_unsure_about_stays_but_confident_foreign_text_goes():
    statement = "Statement of account, categorised transactions:\n" + "\n".join(
        f"{100 + i}.17 USD CHECKCARD {2000 + i} TRADER JOES -> groceries" for i in range(8)
    )
    lang, score = langid.detect(statement)
    assert lang == "en" and score < 0.65  # a confidence threshold on English would drop it
    assert langid.language_reason(statement) is None
    assert langid.language_reason(DE, langid.LanguageRules(min_score=0.999)) is None  # unsure: kept


def test_relevance_is_a_keyword_density():
    rules = relevance.RelevanceRules(keywords=("revenue", "guidance"), patterns=(r"\$\d+",))
    assert relevance.relevance_reason(EN, rules) is None
    assert (
        relevance.relevance_reason("A recipe for apple pie with cinnamon and butter.", rules) == "off_topic"
    )
    long_off_topic = "We baked bread all day long. " * 200 + "revenue"
    assert relevance.relevance_reason(long_off_topic, rules) == "off_topic"
    assert relevance.relevance_reason("anything", relevance.RelevanceRules()) is None


def sft(prompt: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        **extra,
    }


def pref(chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": "What was net income?"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (sft("Net income?", "56.2"), None),
        (sft("Net income?", "  "), "empty_response"),
        (sft("Summarise the filing.", "Revenue rose because"), None),
        (sft("Summarise the filing.", "Revenue rose because of..."), "truncated_response"),
        (sft("Write code.", "```python\nprint(1)"), "truncated_response"),
        (sft("List them.", "(a) revenue, (b) income"), None),
        (sft("List them.", "revenue (as reported"), "truncated_response"),
        (sft("Net income?", "56.2", finish_reason="length"), "truncated_response"),
        (pref("56.2", "57.2"), None),
        (pref("56.2", " 56.2 "), "chosen_equals_rejected"),
        (pref("", "57.2"), "empty_chosen"),
        (sft("x" * 50, "ok"), None),
    ],
)
def test_record_rules(row, reason):
    assert records.record_reason(row) == reason


def test_record_length_limits_are_per_field():
    rules = records.RecordRules(max_prompt_chars=20, max_response_chars=5, min_response_chars=2)
    assert records.record_reason(sft("x" * 21, "ok"), rules) == "prompt_too_long"
    assert records.record_reason(sft("short", "toolong"), rules) == "response_too_long"
    assert records.record_reason(sft("short", "a"), rules) == "response_too_short"


def test_prompt_dedup_keeps_the_lowest_id_whatever_the_answer():
    rows = [
        ("b", sft("What was revenue?", "10")),
        ("a", sft("what was  revenue", "11")),
        ("c", sft("Other?", "1")),
    ]
    dups = records.prompt_duplicates(rows)
    assert [(d.id, d.kept) for d in dups] == [("b", "a")]


def test_chain_stops_at_the_first_drop_and_the_funnel_adds_up():
    cfg = CurateStage.model_validate(
        {
            "filters": [
                {"length": {"min_words": 5}},
                {"language": {}},
                {"c4_lines": {"preset": "finance"}},
            ]
        }
    )
    chain = build_chain(cfg)
    assert [name for name, _ in chain] == ["license", "length", "language", "c4_lines", "pii"]
    docs = [
        {"id": "1", "text": EN + "\nContact ir@example.com for details.", "license": "cc-by-4.0"},
        {"id": "2", "text": "too short", "license": "cc-by-4.0"},
        {"id": "3", "text": DE, "license": "cc-by-4.0"},
        {"id": "4", "text": EN, "license": "proprietary"},
        {"id": "5", "text": EN + "\nHome | Sitemap | Contact\nAll rights reserved.", "license": "cc0-1.0"},
    ]
    res = run_chain(docs, chain)
    res.funnel.check()
    assert [r["id"] for r in res.kept] == ["1", "5"]
    assert {d["id"]: (d["step"], d["reason"]) for d in res.dropped} == {
        "2": ("length", "too_few_words"),
        "3": ("language", "language_de"),
        "4": ("license", "license_not_allowed:proprietary"),
    }
    assert "<EMAIL>" in res.kept[0]["text"] and "ir@example.com" not in res.kept[0]["text"]
    assert "Sitemap" not in res.kept[1]["text"] and res.details["lines_boilerplate"] == 2
    assert res.funnel.steps["license"].seen == 5 and res.funnel.steps["pii"].seen == 2


def test_funnel_check_catches_a_lost_record():
    f = Funnel()
    f.record("a", None)
    f.record("a", "bad")
    f.record("b", None)
    f.record("b", None)  # b saw 2 but a only kept 1
    with pytest.raises(AuditError, match="b: in 2"):
        f.check()


def test_recipe_rule_overrides_lay_over_the_preset():
    cfg = CurateStage.model_validate(
        {"filters": [{"gopher_quality": {"preset": "finance", "min_doc_words": 5}}]}
    )
    step = cfg.filters[0]
    rules = rules_for(step.name, step.config)
    assert rules.min_doc_words == 5
    assert rules.max_non_alpha_words_ratio == STRUCTURED_RULES.max_non_alpha_words_ratio
    off = CurateStage.model_validate({"filters": [{"gopher_quality": {"min_stop_words": None}}]})
    assert rules_for("gopher_quality", off.filters[0].config).min_stop_words is None


def test_the_finance_preset_is_the_structured_one():
    # renamed for what it is (figure-heavy, tabular text: filings, listings, leases); the old name works
    for name in ("gopher_quality", "gopher_repetition", "fineweb_quality", "c4_lines"):
        old = CurateStage.model_validate({"filters": [{name: {"preset": "finance"}}]}).filters[0]
        new = CurateStage.model_validate({"filters": [{name: {"preset": "structured"}}]}).filters[0]
        web = CurateStage.model_validate({"filters": [{name: {"preset": "web"}}]}).filters[0]
        assert rules_for(name, old.config) == rules_for(name, new.config) != rules_for(name, web.config)


def test_bad_curate_blocks_name_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    src = (ROOT / "recipes/finance.yaml").read_text()
    src = src.replace("- length: {min_words: 20}", "- length: {min_word: 20}\n      - gopher_qualty: {}")
    src = src.replace(
        "gopher_quality: {preset: structured}", "gopher_quality: {preset: structured, min_doc_word: 3}"
    )
    path.write_text(src)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert "stages.curate.filters.2.length.min_word: unknown key (did you mean 'min_words'?)" in text
    assert "stages.curate.filters.3.gopher_qualty: unknown key (did you mean 'gopher_quality'?)" in text
    assert "min_doc_word: unknown key (did you mean 'min_doc_words'?)" in text
