"""Readers for the committed sample data, shared by the curation and sample tests."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["finance", "real_estate"]


def rows(domain: str, name: str) -> list[dict]:
    path = ROOT / "data_pipelines" / domain / "sample" / name
    return [json.loads(line) for line in path.read_text().splitlines()]


def noise_kinds(domain: str) -> dict[str, str]:
    """Document id → planted noise kind (documents not listed are clean)."""
    return {r["id"]: r["kind"] for r in rows(domain, "noise_labels.jsonl")}
