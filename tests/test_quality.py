import pytest
from sample_helpers import DOMAINS, noise_kinds, rows

from verticalft.curation.quality import STRUCTURED_RULES, GopherRules, gopher_quality

PROSE = (
    "The company reported that revenue of the group rose, and management said that the outlook "
    "for the year remains stable with the balance sheet strong. "
) * 5


def _corpus(domain):
    kinds = noise_kinds(domain)
    return [(doc, kinds.get(doc["id"], "clean")) for doc in rows(domain, "corpus.jsonl")]


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_preset_keeps_clean_filings_and_drops_junk(domain):
    corpus = _corpus(domain)
    clean = [doc for doc, kind in corpus if kind == "clean"]
    dropped_clean = [doc for doc in clean if gopher_quality(doc["text"], STRUCTURED_RULES)]
    assert len(dropped_clean) <= 0.02 * len(clean)
    junk = [doc for doc, kind in corpus if kind == "too_short"]
    assert all(gopher_quality(doc["text"], STRUCTURED_RULES) == "gopher_short_doc" for doc in junk)
    # The web defaults would throw away a large share of good domain text: why the preset exists.
    assert sum(bool(gopher_quality(doc["text"])) for doc in clean) > 0.3 * len(clean)


@pytest.mark.parametrize(
    "text, reason",
    [
        (PROSE, None),
        ("too short to keep", "gopher_short_doc"),
        (PROSE + " #tag" * 40, "gopher_too_many_hashes"),
        ("\n".join(["• quarterly revenue and the statement of operations"] * 60), "gopher_too_many_bullets"),
        (" ".join(["12,345.6 7,890.1 3,333.3"] * 30) + " the of", "gopher_below_alpha_threshold"),
        ("Revenue rose sharply again. " * 30, "gopher_enough_stop_words"),
    ],
)
def test_rules_and_reason_names(text, reason):
    assert gopher_quality(text, GopherRules()) == reason
