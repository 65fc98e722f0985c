"""The curate stage at corpus scale: peak memory per process and wall time, executor=local (a
process pool) vs executor=ray — both run the global steps as tasks over shard files — and whether
they agree.

    .venv/bin/python benchmarks/bench_curate_scale.py [--sizes 100000 250000 500000 1000000]
        [--work /tmp/curate-scale] [--executors local ray] [--compare]

For each size, the first N documents of one generated corpus (`make_corpus.py`, not committed; N
documents are a prefix of the biggest) go through `verticalft run recipes/finance.yaml -p tiny
--only curate --force` — the finance recipe's filters, exact dedup, near dedup (threshold 0.8,
verified) and decontamination against the sample eval set — with `shard_size=5000` and
`max_dropped_per_reason=100` (the audit sample; without a cap every dropped document's text is
kept for `dropped/`). The executors alternate which runs first at each size.

Memory: every process of the run (the stage's own, its process-pool or Ray workers, Ray's raylet
and GCS) is polled every 0.2 s for its peak resident set (`VmHWM` in /proc, the kernel's own
high-water mark, so a spike between polls still counts); the stage process's own peak also comes
from `getrusage` at its exit. Resident sets include shared pages a process touched (Ray's object
store is shared memory), so per-process peaks are not additive; each process's private memory
(`RssAnon`, the highest polled) is recorded beside it to tell the two apart. Agreement: the two executors'
corpus parts, dropped-audit parts and flagged lists are compared byte for byte, and the funnels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from common import RESULTS, results_header

ROOT = Path(__file__).resolve().parents[1]
# Wrapped so the stage process reports its own peak when it exits (exact, unlike a poll).
WRAP = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "from verticalft.cli import app\n"
    "sys.argv[0] = 'verticalft'\n"
    "app()\n"
)


def role(proc: psutil.Process, main_pid: int) -> str:
    if proc.pid == main_pid:
        return "stage (driver)"
    try:
        name, cmd = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if name in ("raylet", "gcs_server"):
        return f"ray {name}"
    if "ray::" in cmd or "default_worker.py" in cmd:
        return "ray worker"
    if "multiprocessing.spawn" in cmd:
        return "process-pool worker"
    if "multiprocessing.resource_tracker" in cmd:
        return "resource tracker"
    return f"ray other ({name})" if "ray" in cmd else name


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmHWM, RssAnon) of a process: its peak resident set, and its private memory now (RssAnon
    leaves out the shared pages — Ray's object store — that VmHWM counts)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(fields["VmHWM"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def run_stage(corpus: Path, executor: str, runs: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-c", WRAP, "run", "recipes/finance.yaml", "-p", "tiny", "--only", "curate", "--force",
           "--runs-dir", str(runs), "--set", f"data.corpus=[{{path: {corpus}, license: cc-by-4.0}}]",
           "--set", "stages.curate.shard_size=5000", "--set", "stages.curate.max_dropped_per_reason=100",
           "--set", f"stages.curate.executor={executor}", "--set", "stages.curate.num_workers=2"]  # fmt: skip
    log = runs.with_suffix(".log")
    runs.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        main = psutil.Process(proc.pid)
        peaks: dict[int, tuple[str, int]] = {}
        anon: dict[
            int, int
        ] = {}  # highest RssAnon seen per process (a poll: spikes between polls are missed)
        while proc.poll() is None:
            try:
                family = [main, *main.children(recursive=True)]
            except psutil.Error:
                family = []
            for p in family:
                kb = memory_kb(p.pid)
                if kb is None:
                    continue
                if kb[0] > peaks.get(p.pid, ("", 0))[1]:
                    peaks[p.pid] = (peaks.get(p.pid, (None,))[0] or role(p, proc.pid), kb[0])
                anon[p.pid] = max(anon.get(p.pid, 0), kb[1])
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    text = log.read_text()
    if proc.returncode:
        raise SystemExit(f"{executor} run failed ({proc.returncode}); see {log}")
    own = max([int(line.split()[1]) for line in text.splitlines() if line.startswith("PEAK_RSS_KB")] or [0])
    peaks[proc.pid] = ("stage (driver)", max(own, peaks.get(proc.pid, ("", 0))[1]))
    by_role: dict[str, dict[str, Any]] = {}
    for pid, (name, kb) in peaks.items():
        r = by_role.setdefault(name, {"processes": 0, "peak_mb": 0.0, "peak_private_mb": 0.0})
        r["processes"] += 1
        r["peak_mb"] = max(r["peak_mb"], round(kb / 1024, 1))
        r["peak_private_mb"] = max(r["peak_private_mb"], round(anon.get(pid, 0) / 1024, 1))
    attempts = [json.loads(x) for x in (runs / "finance/tiny/attempts.jsonl").read_text().splitlines()]
    record = json.loads((runs / "finance/tiny/manifest.json").read_text())["stages"]["curate"]
    return {
        "wall_s": round(wall, 1),
        "stage_s": round(attempts[-1]["seconds"], 1),
        "peak_mb_any_process": max(r["peak_mb"] for r in by_role.values()),
        "peak_mb_by_role": dict(sorted(by_role.items())),
        "kept": record["metrics"]["kept"],
        "dropped": record["metrics"]["dropped"],
        "funnel": record["metrics"]["funnel"],
    }


def outputs(runs: Path) -> dict[str, bytes]:
    stage = runs / "finance/tiny/curate"
    files = sorted((stage / "corpus").glob("part-*.parquet")) + sorted(
        (stage / "dropped").glob("part-*.parquet")
    )
    return {str(p.relative_to(stage)): p.read_bytes() for p in [*files, stage / "flagged.jsonl"]}


def agreement(work: Path, n: int) -> dict[str, bool]:
    """Whether the local and Ray runs of `n` documents under `work` wrote the same outputs."""
    a, b = (outputs(work / f"runs-{ex}-{n}") for ex in ("local", "ray"))
    funnels = [
        json.loads((work / f"runs-{ex}-{n}/finance/tiny/manifest.json").read_text())["stages"]["curate"][
            "metrics"
        ]["funnel"]
        for ex in ("local", "ray")
    ]
    return {
        "same_files": sorted(a) == sorted(b),
        "identical_bytes": a == b,
        "same_funnel": funnels[0] == funnels[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 250_000, 500_000, 1_000_000])
    ap.add_argument("--executors", nargs="+", default=["local", "ray"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/curate-scale"))
    ap.add_argument(
        "--compare", action="store_true", help="only compare the existing local and Ray runs of each size"
    )
    args = ap.parse_args()
    if args.compare:  # runs of the two executors made by separate commands
        for n in args.sizes:
            print(n, agreement(args.work, n))
        return
    load = os.getloadavg()
    biggest = args.work / f"corpus-{max(args.sizes)}.jsonl"
    if not biggest.is_file():
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_corpus.py"), "--docs", str(max(args.sizes)),
                        "--out", str(biggest)], check=True)  # fmt: skip
    results: dict[str, Any] = {}
    for i, n in enumerate(sorted(args.sizes)):
        corpus = args.work / f"corpus-{n}.jsonl"
        if not corpus.is_file():
            with biggest.open() as src, corpus.open("w") as dst:
                for _, line in zip(range(n), src, strict=False):
                    dst.write(line)
        order = args.executors if i % 2 == 0 else args.executors[::-1]
        row: dict[str, Any] = {"corpus_mb": round(corpus.stat().st_size / 2**20, 1)}
        for ex in order:
            row[ex] = run_stage(corpus, ex, args.work / f"runs-{ex}-{n}")
            print(n, ex, {k: v for k, v in row[ex].items() if k != "funnel"}, flush=True)
        if len(args.executors) == 2:
            row["agreement"] = agreement(args.work, n)
            print(n, row["agreement"], flush=True)
        for ex in args.executors:
            row[ex].pop("funnel")
        results[str(n)] = row
    # Other runs (another command) stay in the file, each with its own command line; only the
    # (size, executor) results measured again are replaced, with the agreement that used them.
    out = RESULTS / "curate_scale.json"
    old = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    for run in old["runs"]:
        for n in set(run["sizes"]) & set(results):
            row = run["sizes"][n]
            if any(row.pop(ex, None) for ex in args.executors):
                row.pop("agreement", None)
            if not set(row) - {"corpus_mb"}:
                del run["sizes"][n]
    old["runs"] = [r for r in old["runs"] if r["sizes"]]
    old["runs"].append({**results_header(Path(__file__).name, sys.argv[1:], load), "sizes": results})
    out.write_text(json.dumps(old, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
