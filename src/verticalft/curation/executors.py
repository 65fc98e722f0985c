"""Where the per-shard work runs: a local process pool (every core) or Ray.

Both executors call the same top-level function on the same shards and hand results back in
shard order, so the output cannot depend on which one ran or how tasks were scheduled. Ray
joins the cluster named by `RAY_ADDRESS` when set, else starts a local instance with
`num_workers` CPUs (and shuts down only what it started). `session` keeps one pool or Ray instance
up across the calls of a stage (the filters, then each global step).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_shards(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    executor: str = "local",
    num_workers: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield (job index, fn(*job)) as jobs finish; callers order by index."""
    if not jobs:
        return
    workers = min(num_workers or default_workers(), len(jobs))
    if executor == "ray":
        yield from _ray_map(fn, jobs, workers)
    elif workers == 1:
        for i, job in enumerate(jobs):
            yield i, fn(*job)
    elif _pool is not None:
        yield from _pool_map(_pool, fn, jobs)
    else:
        with _spawn_pool(workers) as pool:
            yield from _pool_map(pool, fn, jobs)


_pool: ProcessPoolExecutor | None = None  # the local session's pool, while one is open


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    # spawn: workers start clean, whatever the parent imported (torch, CUDA) before.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _pool_map(
    pool: ProcessPoolExecutor, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]
) -> Iterator[tuple[int, Any]]:
    futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
    for fut in as_completed(futures):
        yield futures[fut], fut.result()


@contextlib.contextmanager
def session(executor: str, num_workers: int | None = None) -> Iterator[None]:
    """Keep one process pool (local) or Ray instance up across several `map_shards` calls: each
    would otherwise start and stop its own — spawned workers import numpy, pyarrow and the
    curation modules again, Ray takes ~5 s. A call with one job still runs in this process."""
    workers = num_workers or default_workers()
    with _ray_session(workers) if executor == "ray" else _local_session(workers):
        yield


@contextlib.contextmanager
def _local_session(workers: int) -> Iterator[None]:
    global _pool
    if _pool is not None or workers == 1:  # nested, or nothing to run in parallel
        yield
        return
    _pool = _spawn_pool(workers)
    try:
        yield
    finally:
        _pool.shutdown(cancel_futures=True)
        _pool = None


@contextlib.contextmanager
def _ray_session(workers: int) -> Iterator[None]:
    started = _ray_init(workers)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _ray_init(workers: int) -> bool:
    """Join `RAY_ADDRESS` or start a local instance, unless one is up; True when this call started it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(
            "stages.curate.executor=ray needs Ray: pip install 'verticalft[ray]' (or use executor=local)"
        ) from exc
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kwargs)
    return True


def _ray_map(
    fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int
) -> Iterator[tuple[int, Any]]:
    import ray

    started = _ray_init(workers)
    try:
        remote = ray.remote(num_cpus=1)(fn)
        shared = _put_shared(jobs)
        refs = {remote.remote(*(shared.get(id(a), a) for a in job)): i for i, job in enumerate(jobs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def _put_shared(jobs: Sequence[tuple[Any, ...]]) -> dict[int, Any]:
    """Object refs for the arguments several jobs share (the same object: an eval index, a list of
    files, the refs to leave out): Ray copies a big argument into its object store once per task
    otherwise, and every task is submitted at once. Tasks receive the value, as before."""
    import ray

    counts = Counter(
        id(a) for job in jobs for a in job if not isinstance(a, (bool, int, float, str, type(None)))
    )
    objects = {id(a): a for job in jobs for a in job}
    return {key: ray.put(objects[key]) for key, n in counts.items() if n > 1}
