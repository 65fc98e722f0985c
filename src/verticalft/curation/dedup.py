"""Exact deduplication on a normalised text hash, deterministic: the lowest id of a group stays.

Normalisation (case, whitespace, punctuation) makes re-published copies that differ only in
formatting count as exact duplicates; near duplicates (edited copies) are MinHash LSH's job.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def lowercase_words(text: str) -> str:
    """The words of `text`, NFKC lower-cased, one space between them: punctuation and runs of
    whitespace are separators. Copies that differ only in formatting give the same string."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def text_hash(text: str) -> str:
    return hashlib.blake2b(lowercase_words(text).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Duplicate:
    id: str
    kept: str  # the id of the copy that stays


def exact_duplicates(records: Iterable[tuple[str, str]]) -> list[Duplicate]:
    """(id, text) pairs → the records to drop, each with the id it duplicates.

    Deterministic whatever the input order: within a group the smallest id is kept.
    """
    groups: dict[str, list[str]] = {}
    for rid, text in records:
        groups.setdefault(text_hash(text), []).append(rid)
    dropped = []
    for ids in groups.values():
        keep = min(ids)
        dropped += [Duplicate(rid, keep) for rid in sorted(ids) if rid != keep]
    return sorted(dropped, key=lambda d: d.id)
