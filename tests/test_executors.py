"""The local executor's session keeps one process pool across `map_shards` calls (the filters,
then each global step), as it keeps one Ray instance: a call inside it starts no new workers."""

import os
import time

from verticalft.curation import executors


def test_a_local_session_runs_every_call_on_the_same_workers():
    jobs = [(0.3,)] * 4  # each worker sleeps in turn, so both take jobs
    with executors.session("local", 2):
        calls = [{pid for _, pid in executors.map_shards(sleep_then_pid, jobs, "local", 2)} for _ in range(3)]
    assert len(set().union(*calls)) == 2  # a new pool per call: 6 processes
    assert os.getpid() not in set().union(*calls)
    # Outside a session each call has its own pool, still in other processes.
    alone = [{pid for _, pid in executors.map_shards(sleep_then_pid, jobs, "local", 2)} for _ in range(2)]
    assert not alone[0] & alone[1] and os.getpid() not in alone[0]


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()
