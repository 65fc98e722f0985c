import pytest
from sample_helpers import DOMAINS, noise_kinds, rows

from verticalft.curation.lines import STRUCTURED_LINE_RULES, LineRules, c4_lines
from verticalft.sample_data import BOILERPLATE


@pytest.mark.parametrize("domain", DOMAINS)
def test_boilerplate_removed_and_clean_text_untouched(domain):
    kinds = noise_kinds(domain)
    for doc in rows(domain, "corpus.jsonl"):
        kind = kinds.get(doc["id"], "clean")
        res = c4_lines(doc["text"], STRUCTURED_LINE_RULES)
        if kind == "clean":
            assert res.text == doc["text"].strip()
        elif kind == "boilerplate":
            assert res.text is None and res.reason == "too_few_sentences"
        elif kind == "boilerplate_lines":
            assert res.text and not any(b in res.text for b in BOILERPLATE)
            assert res.dropped_lines["boilerplate"] + res.dropped_lines["policy"] == 3


def test_c4_web_defaults():
    prose = "\n".join(f"This is sentence number {i} of the page." for i in range(6))
    assert c4_lines(prose).text == prose
    assert c4_lines(prose + "\nmenu item without punctuation").dropped_lines["no_terminal_punc"] == 1
    assert c4_lines(prose + "\nLorem ipsum dolor sit amet.").reason == "lorem_ipsum"
    assert c4_lines(prose + "\nThe template uses {name} here.").reason == "curly_bracket"
    assert c4_lines("One sentence only.").reason == "too_few_sentences"
    assert c4_lines(prose, LineRules(min_num_sentences=7)).reason == "too_few_sentences"


def test_noise_check_judges_boilerplate_lines_against_what_was_planted():
    from verticalft.curation.noise_check import check_planted_noise

    planted = ["Share this page: Facebook Twitter LinkedIn Email", "Copyright 2024. All rights reserved."]
    body = "Revenue rose 4% to $12 million. Margins held."
    labels = [{"id": "a", "kind": "boilerplate_lines", "detail": planted},
              {"id": "b", "kind": "boilerplate_lines", "detail": planted}]  # fmt: skip
    # a: every planted line gone (an unplanted menu line may stay: not this check's business);
    # b: one planted line survived → missed, whatever the filter's regex thinks of it
    kept = {"a": body + "\nHome | About", "b": body + "\n" + planted[1]}
    out = check_planted_noise(labels, kept, {})["kinds"]["boilerplate_lines"]
    assert (out["planted"], out["caught"], out["missed"]) == (2, 1, ["b"])
