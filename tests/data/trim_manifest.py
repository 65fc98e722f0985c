"""Make `report_manifest.json` from a real run: `python tests/data/trim_manifest.py runs/finance/tiny`.

Keeps every metric the report and the cost/route stages read; thins loss curves to every 6th
point, drops eval examples and per-request repeats' detail beyond what the report shows, and makes
paths relative to the run directory (the fixture must not name this machine's folders).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def relative(obj: Any, root: str) -> Any:
    if isinstance(obj, str) and obj.startswith(root):
        return obj[len(root) :].lstrip("/") or "."
    if isinstance(obj, dict):
        return {k: relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative(v, root) for v in obj]
    return obj


def thin(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "loss_curve" and isinstance(v, list):
                out[k] = v[::6] + ([v[-1]] if v and (len(v) - 1) % 6 else [])
            elif k == "examples":
                continue
            else:
                out[k] = thin(v)
        return out
    if isinstance(obj, list):
        return [thin(v) for v in obj]
    return obj


def main(run: str) -> None:
    root = Path(run).resolve()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("updated_at", None)
    trimmed = relative(thin(manifest), str(root))
    trimmed = relative(trimmed, run.rstrip("/"))
    out = Path(__file__).with_name("report_manifest.json")
    out.write_text(json.dumps(trimmed, indent=1, sort_keys=True) + "\n")
    print(f"{out}: {out.stat().st_size:,} bytes")  # noqa: T201 - the script's output


if __name__ == "__main__":
    main(sys.argv[1])
