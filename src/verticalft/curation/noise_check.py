"""Score curation against planted noise: the sample builders label every document they spoil
(`noise_labels.jsonl`: id, kind, detail), so the report can say how much of each kind was caught
and how many clean documents were lost with it.

Caught means: dropped, for kinds that should go (duplicates, boilerplate pages, non-English,
too short, stale, non-redistributable); every planted value gone from the kept text (or from the
audit copy, when another rule dropped the document), for `pii`; none of the planted navigation/cookie lines (the label's `detail`) left in the kept
text, for `boilerplate_lines` (the page is good, its navigation lines are not) — judged against
what was planted, not against the filter's own pattern.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from verticalft.curation.lines import BOILERPLATE

KEPT_KINDS = {"pii", "boilerplate_lines"}  # good documents with bad parts: keep and repair


def _caught(label: dict[str, Any], kept: dict[str, str], dropped: dict[str, dict[str, Any]]) -> bool:
    rid, kind = label["id"], label["kind"]
    if kind not in KEPT_KINDS:
        return rid not in kept
    if kind == "pii":  # kept, or dropped for another reason: no copy may hold the raw values
        text = kept.get(rid, dropped.get(rid, {}).get("text"))
        values = label["detail"].values() if isinstance(label["detail"], dict) else []
        return text is not None and all(str(v) not in text for v in values)
    if rid not in kept:
        return False
    planted = label["detail"] if isinstance(label["detail"], list) else []
    if not planted:  # labels written before the planted lines were recorded
        return not any(BOILERPLATE.search(line) for line in kept[rid].splitlines())
    lines = {line.strip() for line in kept[rid].splitlines()}
    return not any(p.strip() in lines for p in planted)


def check_planted_noise(
    labels: list[dict[str, Any]], kept: dict[str, str], dropped: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per planted kind: planted / caught / rate / a few missed ids; and the clean documents lost."""
    by_kind: dict[str, dict[str, Any]] = {}
    for label in labels:
        k = by_kind.setdefault(label["kind"], {"planted": 0, "caught": 0, "missed": []})
        k["planted"] += 1
        if _caught(label, kept, dropped):
            k["caught"] += 1
        elif len(k["missed"]) < 10:
            k["missed"].append(label["id"])
    for k in by_kind.values():
        k["rate"] = round(k["caught"] / k["planted"], 4)
    labelled = {label["id"] for label in labels}
    clean = [i for i in list(kept) + list(dropped) if i not in labelled]
    lost = [i for i in clean if i in dropped]
    reasons = Counter(f"{dropped[i]['step']}:{dropped[i]['reason']}" for i in lost)
    return {
        "kinds": dict(sorted(by_kind.items())),
        "clean": {
            "total": len(clean),
            "dropped": len(lost),
            "rate": round(len(lost) / max(len(clean), 1), 4),
            "reasons": dict(reasons.most_common()),
            "examples": sorted(lost)[:10],
        },
    }


def noise_labels(sources: list[Any]) -> list[dict[str, Any]]:
    """The planted-noise labels shipped beside the sources (`noise_labels.jsonl`; the samples have them)."""
    import json
    from pathlib import Path

    labels = []
    for s in sources:
        path = Path(s.path).parent / "noise_labels.jsonl"
        if path.is_file():
            labels += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return labels
