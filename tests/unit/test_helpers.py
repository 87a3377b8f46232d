"""Helper threads: a pool like any other, whose idle threads wake on a CPU other than the caller's."""

import ctypes
import os
import threading

import numpy as np
import pytest

from rtdecode.pipeline.helpers import HelperThreads


def test_results_and_errors_come_back_as_from_any_pool():
    with HelperThreads(2, "t") as pool:
        assert [f.result() for f in [pool.submit(pow, 2, k) for k in range(5)]] == [1, 2, 4, 8, 16]
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result()
        assert pool.submit(sum, [1, 2], start=3).result() == 6


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs"
)
def test_an_idle_helper_starts_off_the_callers_cpu_and_may_go_anywhere_after():
    getcpu = ctypes.CDLL(None).sched_getcpu
    allowed = os.sched_getaffinity(0)
    caller_cpu = min(allowed)
    seen, after = [], []

    def where() -> tuple[int, int]:
        return getcpu(), threading.get_native_id()

    def caller() -> None:
        pool = HelperThreads(1, "t")  # its helpers may use every CPU this thread may
        os.sched_setaffinity(0, {caller_cpu})
        with pool:
            pool.submit(where).result()  # the thread exists, and idles from now on
            for _ in range(10):
                job = pool.submit(where)
                np.ones(4_000_000).sum()  # the caller keeps its CPU busy while the helper wakes
                cpu, tid = job.result()
                seen.append(cpu)
                after.append(os.sched_getaffinity(tid))

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert caller_cpu not in seen
    assert all(cpus == allowed for cpus in after)
