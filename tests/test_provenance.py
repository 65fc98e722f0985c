import datetime as dt
import json
from pathlib import Path

import pytest

from verticalft.curation.provenance import license_reason, recency_reason

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = dt.date(2008, 1, 1)


@pytest.mark.parametrize("domain", ["finance", "real_estate"])
def test_planted_licence_and_stale_docs_are_caught_and_nothing_clean(domain):
    d = ROOT / "data_pipelines" / domain / "sample"
    kinds = {
        json.loads(x)["id"]: json.loads(x)["kind"]
        for x in (d / "noise_labels.jsonl").read_text().splitlines()
    }
    for doc in (json.loads(x) for x in (d / "corpus.jsonl").read_text().splitlines()):
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
