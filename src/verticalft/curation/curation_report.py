"""The curation report: `curate/report.md` and `curate/funnel.png` from the stage's metrics.

Markdown so it reads in any browser or PR; one PNG of the drop funnel (records left after each
step) so the biggest cut is visible at a glance. Built only from the metrics the stage records,
so `make <domain>-report` can rebuild it without re-running curation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verticalft.rundir import atomic_write_text


def plot_funnel(funnel: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["read"] + [s["step"] for s in funnel]
    left = [funnel[0]["in"] if funnel else 0] + [s["kept"] for s in funnel]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    bars = ax.barh(names[::-1], left[::-1], color="#3b7dd8")
    for bar, n in zip(bars, left[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {n:,}", va="center", fontsize=8)
    ax.set_xlabel("documents left after the step")
    ax.set_title(title)
    ax.set_xlim(0, max(left + [1]) * 1.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(name: str, m: dict[str, Any]) -> str:
    """`report.md` from the curate stage's metrics: the headline and funnel, the repairs made to
    kept documents, the planted noise caught (sample data only), the training sets and the
    quarantined rows; a section with nothing to say is left out."""
    lines = [
        *_headline_and_funnel(name, m),
        *_repairs(m),
        *_planted_noise(m.get("planted_noise")),
        *_training_records(m.get("records", {})),
        *_quarantine(m.get("quarantine")),
        "",
        "Every dropped record is in `dropped/*.parquet` with its step, reason and detail "
        "(the kept copy for duplicates, the eval item for contamination).",
        "",
    ]
    return "\n".join(lines)


def _headline_and_funnel(name: str, m: dict[str, Any]) -> list[str]:
    """What was read, kept and dropped, how it ran, and the funnel table (the six biggest drop
    reasons of each step)."""
    lines = [
        f"# Curation report — {name}",
        "",
        f"{m['read']:,} documents read ({m['quarantined']} malformed rows quarantined), "
        f"**{m['kept']:,} kept**, {m['dropped']:,} dropped; executor `{m['executor']}`, "
        f"{m['shards']} shard(s) ({m['shards_resumed']} reused from a killed run).",
        "",
        "![drop funnel](funnel.png)",
        "",
        "| step | in | kept | dropped | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for s in m["funnel"]:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["dropped"].items(), key=lambda x: -x[1])[:6])
        lines.append(f"| {s['step']} | {s['in']:,} | {s['kept']:,} | {s['in'] - s['kept']:,} | {reasons} |")
    return lines


def _repairs(m: dict[str, Any]) -> list[str]:
    """Documents kept but changed (PII redacted, lines removed), and eval-set contamination."""
    details = m.get("details", {})
    pii = {k[4:]: v for k, v in details.items() if k.startswith("pii_")}
    removed = {k[6:]: v for k, v in details.items() if k.startswith("lines_")}
    return [
        "",
        "## Repairs (documents kept)",
        "",
        "PII redacted: " + (", ".join(f"{k} {v}" for k, v in pii.items()) or "none"),
        "",
        "Lines removed: " + (", ".join(f"{k} {v}" for k, v in removed.items()) or "none"),
        "",
        f"Eval-set contamination: {m['flagged_contamination']} corpus document(s) contain an eval item "
        f"(`flagged.jsonl`); {m['eval_items_unmatchable']} eval item(s) consist only of wording common in "
        "the training data and cannot be matched.",
    ]


def _planted_noise(noise: dict[str, Any] | None) -> list[str]:
    """How much of each planted kind curation caught, and the clean documents it dropped: only the
    sample data has noise labels."""
    if not noise:
        return []
    lines = ["", "## Planted noise caught (sample data labels)", "", "| kind | planted | caught | rate |"]
    lines.append("|---|---:|---:|---:|")
    for kind, k in noise["kinds"].items():
        lines.append(f"| {kind} | {k['planted']} | {k['caught']} | {k['rate']:.0%} |")
    c = noise["clean"]
    reasons = ": " + ", ".join(f"{r} {n}" for r, n in c["reasons"].items()) if c["reasons"] else "."
    return [
        *lines,
        "",
        f"Clean documents dropped: {c['dropped']} of {c['total']} ({c['rate']:.1%})" + reasons,
    ]


def _training_records(sets: dict[str, Any]) -> list[str]:
    """Each SFT / preference set: in, kept, drops by reason, PII redacted; and each source's
    trained rows when the weights make them differ from the kept ones."""
    if not sets:
        return []
    lines = ["", "## Training records", ""]
    for set_name, s in sets.items():
        drops = {r: n for step in s["funnel"] for r, n in step["dropped"].items()}
        lines.append(
            f"- `{set_name}`: {s['in']:,} in → {s['kept']:,} kept; dropped: "
            + (", ".join(f"{r} {n}" for r, n in drops.items()) or "none")
            + f"; PII redacted {sum(s['pii'].values())}"
        )
        if len(s.get("sources", [])) > 1 or any(x["weight"] != 1 for x in s.get("sources", [])):
            lines += [
                f"  - `{x['path']}`: {x['kept']:,} kept × weight {x['weight']:g} → {x['trained']:,} trained rows"
                for x in s["sources"]
            ]
    return lines


def _quarantine(rows: list[dict[str, Any]] | None) -> list[str]:
    """The first 20 malformed rows, with file and line (all of them are in `quarantine.jsonl`)."""
    if not rows:
        return []
    return [
        "",
        "## Quarantined rows (`quarantine.jsonl`)",
        "",
        *(f"- `{q['file']}:{q['line']}` — {q['error']}" for q in rows[:20]),
    ]


def write_report(folder: Path, name: str, metrics: dict[str, Any]) -> Path:
    plot_funnel(metrics["funnel"], folder / "funnel.png", f"{name}: curation funnel")
    path = folder / "report.md"
    atomic_write_text(path, render(name, metrics))
    return path
