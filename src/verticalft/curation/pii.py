"""Detect and redact personal data: e-mails, phone numbers, IPs, card numbers (Luhn-checked),
IBANs (mod-97-checked), US SSNs and bank account numbers next to an account keyword.

Redaction, not dropping: a filing that quotes an investor-relations phone number is still good
domain text once the number reads `<PHONE>`. Checksums keep false positives down: a 16-digit
order number that fails Luhn is not a card; an IBAN-shaped string that fails mod 97 is not an IBAN.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


def luhn_valid(digits: str) -> bool:
    nums = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(nums) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(nums)):
        if i % 2 == 1:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    s = re.sub(r"\s+", "", text).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", s):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# (kind, pattern, validator): order matters — the more specific kinds go first.
_RULES: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), None),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), iban_valid),
    ("card", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), luhn_valid),
    ("ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), None),
    ("phone", re.compile(r"(?:\+?1[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"), None),
    ("ip", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), None),
    # Bare account numbers are only recognisable by the words around them.
    ("account", re.compile(r"(?i)\b(?<=account number )\d{8,17}\b|(?<=account no\. )\d{8,17}\b"), None),
]
PLACEHOLDER = {kind: f"<{kind.upper()}>" for kind, _, _ in _RULES}


@dataclass
class Redaction:
    text: str
    counts: Counter = field(default_factory=Counter)


def redact(text: str) -> Redaction:
    """Replace every detected PII span with its `<KIND>` placeholder; count them per kind."""
    counts: Counter = Counter()
    for kind, pattern, valid in _RULES:

        def sub(m: re.Match[str], kind: str = kind, valid=valid) -> str:
            if valid is not None and not valid(m.group()):
                return m.group()
            counts[kind] += 1
            return PLACEHOLDER[kind]

        text = pattern.sub(sub, text)
    return Redaction(text, counts)
