import datetime as dt

import pytest
from sample_helpers import DOMAINS, noise_kinds, rows

from verticalft.curation.provenance import license_reason, recency_reason

CUTOFF = dt.date(2008, 1, 1)


@pytest.mark.parametrize("domain", DOMAINS)
def test_planted_licence_and_stale_docs_are_caught_and_nothing_clean(domain):
    kinds = noise_kinds(domain)
    for doc in rows(domain, "corpus.jsonl"):
        kind = kinds.get(doc["id"], "clean")
        lic, stale = license_reason(doc["license"]), recency_reason(doc["date"], CUTOFF)
        assert (lic is not None) == (kind == "license"), doc["id"]
        assert (stale is not None) == (kind == "stale_date"), doc["id"]


def test_rules():
    assert license_reason("CC-BY-4.0") is None
    assert license_reason("proprietary") == "license_not_allowed:proprietary"
    assert license_reason(None) == "license_missing"
    assert license_reason("internal", {"internal"}) is None
    assert recency_reason("2003-05-01", CUTOFF) == "stale_date"
    assert recency_reason("not a date", CUTOFF) is None and recency_reason(None, CUTOFF) is None
