"""Peak memory of the corpus merge (`shards.merge_parts`) by the number of shard files merged, on the
survivor files of a finished executor=ray curate run (e.g. one of `bench_curate_scale.py`'s).

    .venv/bin/python benchmarks/bench_merge_memory.py --survivors /tmp/curate-scale/runs-ray-1000000/finance/tiny/curate/global/survivors --files 20 100 200

Each count runs in its own process (peak resident memory from getrusage), merging the first N files
into corpus parts of 5,000 rows in a temporary folder, as the stage does. A streaming merge should
not grow with N.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CHILD = """
import resource, sys, tempfile, time
from pathlib import Path
from verticalft.curation.shards import merge_parts
paths = sorted(str(p) for p in Path(sys.argv[1]).glob("*.parquet"))[: int(sys.argv[2])]
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    parts = merge_parts(paths, Path(out), 5000)
print(f"{len(paths)} files -> {len(parts)} parts: peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB,"
      f" {time.perf_counter() - t0:.1f} s")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--survivors", type=Path, required=True, help="global/survivors of a Ray curate run")
    ap.add_argument("--files", type=int, nargs="+", default=[20, 100, 200])
    args = ap.parse_args()
    for n in args.files:
        subprocess.run([sys.executable, "-c", CHILD, str(args.survivors), str(n)], check=True)


if __name__ == "__main__":
    main()
