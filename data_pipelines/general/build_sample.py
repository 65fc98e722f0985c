"""Build the general-text replay sample mixed into CPT against forgetting.

python data_pipelines/general/build_sample.py     # writes data_pipelines/general/sample/replay.jsonl
"""

from __future__ import annotations

from pathlib import Path

from verticalft.sample_data import build_general_replay

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "sample"
    print(f"{out / 'replay.jsonl'}: {build_general_replay(out)} rows")  # noqa: T201 - the script's output
