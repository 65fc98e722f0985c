"""Peak memory of the near-dup verification step (`sharded_steps.verify_pairs`) by chunk size, on the
candidate pairs of a finished executor=ray curate run (e.g. one of `bench_curate_scale.py`'s).

    .venv/bin/python benchmarks/bench_verify_chunks.py --stage /tmp/curate-scale/runs-ray-1000000/finance/tiny/curate --chunk 50000
    .venv/bin/python benchmarks/bench_verify_chunks.py --stage … --chunk 2000

One process verifies every pair, a chunk at a time, as one task would; prints the pairs verified,
this process's peak resident memory (getrusage) and the time. Run each chunk size in its own process.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from verticalft.curation.sharded_steps import candidate_pairs, verify_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=Path, required=True, help="the curate stage folder of a Ray run")
    ap.add_argument("--chunk", type=int, required=True)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    pairs = candidate_pairs(sorted((args.stage / "global/pairs").glob("*.npy")))
    paths = {int(p.name[6:11]): str(p) for p in (args.stage / "shards").glob("shard-*.kept.parquet")}
    t0, verified = time.perf_counter(), 0
    for i in range(0, len(pairs), args.chunk):
        verified += len(verify_pairs(paths, pairs[i : i + args.chunk], args.ngram, args.threshold, True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"chunk {args.chunk}: {len(pairs)} pairs, {verified} verified, peak {peak:.0f} MB, {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
