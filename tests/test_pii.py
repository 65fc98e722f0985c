import pytest
from sample_helpers import DOMAINS, rows

from verticalft.curation.pii import iban_valid, luhn_valid, redact


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_planted_pii_value_is_redacted_and_clean_docs_are_untouched(domain):
    corpus = {r["id"]: r for r in rows(domain, "corpus.jsonl")}
    labels = rows(domain, "noise_labels.jsonl")
    noisy = {r["id"] for r in labels}
    for lab in (r for r in labels if r["kind"] == "pii"):
        red = redact(corpus[lab["id"]]["text"])
        for kind, value in lab["detail"].items():
            assert value not in red.text, (kind, value)
            assert red.counts[kind] >= 1
    clean = [doc for i, doc in corpus.items() if i not in noisy]
    assert len(clean) > 800
    assert sum(sum(redact(doc["text"]).counts.values()) for doc in clean) == 0


def test_checksums_keep_lookalikes():
    assert luhn_valid("4532 0151 1283 0366") and not luhn_valid("4532 0151 1283 0367")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE88 3704 0044 0532 0130 00")
    red = redact("Order 4532 0151 1283 0367 shipped; card 4532 0151 1283 0366 charged; mail a.b@example.com")
    assert "4532 0151 1283 0367" in red.text and "<CARD>" in red.text and "<EMAIL>" in red.text
    assert dict(red.counts) == {"card": 1, "email": 1}


def test_placeholders_per_kind():
    text = "Call (415) 555-0134, SSN 123-45-6789, from 10.2.3.4, account number 12345678901."
    assert redact(text).text == "Call <PHONE>, SSN <SSN>, from <IP>, account number <ACCOUNT>."
