import random

import pytest
from sample_helpers import DOMAINS, rows

from verticalft.curation.dedup import exact_duplicates, lowercase_words


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_planted_exact_duplicate_is_dropped_and_the_original_kept(domain):
    corpus = rows(domain, "corpus.jsonl")
    planted = {
        r["id"]: r["detail"] for r in rows(domain, "noise_labels.jsonl") if r["kind"] == "exact_duplicate"
    }
    dropped = {dup.id: dup.kept for dup in exact_duplicates((r["id"], r["text"]) for r in corpus)}
    for dup_id, original in planted.items():
        assert dup_id in dropped  # every planted copy goes …
        assert dropped[dup_id] <= original  # … and the group's lowest id (the original or older) stays
    # Nothing but copies is dropped: every dropped record shares its normalised text with the kept one.
    texts = {r["id"]: lowercase_words(r["text"]) for r in corpus}
    assert all(texts[i] == texts[k] for i, k in dropped.items())


def test_order_does_not_matter_and_formatting_is_ignored():
    recs = [("b", "Net revenue rose."), ("a", "net   revenue ROSE"), ("c", "Net revenue fell.")]
    expected = exact_duplicates(recs)
    assert [(d.id, d.kept) for d in expected] == [("b", "a")]
    random.Random(0).shuffle(recs)
    assert exact_duplicates(recs) == expected
