"""Helper threads (idle ones wake on a CPU other than the caller's) and the work they share."""

import ctypes
import os
import threading

import numpy as np
import pytest

from rtdecode.pipeline.helpers import HelperThreads, SharedWork, share


def test_results_and_errors_come_back_as_from_any_pool():
    with HelperThreads(2, "t") as pool:
        assert [f.result() for f in [pool.submit(pow, 2, k) for k in range(5)]] == [1, 2, 4, 8, 16]
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result()
        assert pool.submit(sum, [1, 2], start=3).result() == 6


two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs"
)


@two_cpus
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


@two_cpus
def test_alongside_keeps_caller_and_helper_on_different_cpus_until_the_block_ends():
    getcpu = ctypes.CDLL(None).sched_getcpu
    allowed = os.sched_getaffinity(0)
    inside, helper, after = [], [], []

    def work() -> None:
        helper.append((getcpu(), os.sched_getaffinity(0)))
        np.ones(4_000_000).sum()  # busy beside the caller: the scheduler may not bring them together

    def caller() -> None:
        with HelperThreads(1, "t") as pool:
            for _ in range(5):  # the first block also starts the helper thread
                with pool.alongside(work) as (job,):
                    cpu = getcpu()
                    inside.append((cpu, os.sched_getaffinity(0)))
                    np.ones(4_000_000).sum()
                    job.result()
                after.append(os.sched_getaffinity(0))
        after.append(os.sched_getaffinity(0))

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert [cpus for _, cpus in inside] == [{cpu} for cpu, _ in inside]
    assert all(cpus == allowed - {mine} for (mine, _), (_, cpus) in zip(inside, helper))
    assert all(cpu != mine for (mine, _), (cpu, _) in zip(inside, helper))
    assert after == [allowed] * 6


def test_shared_work_gives_every_result_in_task_order_on_any_number_of_threads():
    for n_threads in (1, 2, 3):
        work = SharedWork(lambda i: i * i, 9)
        helpers = [threading.Thread(target=work.run) for _ in range(n_threads - 1)]
        for t in helpers:
            t.start()
        assert work.run_and_wait() == [i * i for i in range(9)]
        for t in helpers:
            t.join()
    assert SharedWork(lambda i: i, 0).run_and_wait() == []


def test_share_runs_every_task_on_the_caller_and_the_pools_helpers_at_once():
    # Tasks 0-2 each wait for the other two: they can only finish on three threads at once.
    with HelperThreads(2, "share") as pool:
        together = threading.Barrier(3, timeout=60)
        threads = {}

        def task(i):
            if i < 3:
                together.wait()
            threads[i] = threading.get_ident()
            return i + 1

        assert share(pool, task, 40) == list(range(1, 41))
        assert len({threads[i] for i in range(3)}) == 3 and threading.get_ident() in threads.values()
    assert share(None, lambda i: i + 1, 3) == [1, 2, 3]
    assert share(None, lambda i: i, 0) == []


def test_a_task_stalled_on_another_thread_is_run_again_instead_of_waited_for():
    # The helper takes task 0 and stalls in it (a paused core) until the caller has its answer:
    # the caller runs task 0 itself once the others are done and keeps the first answer.
    release, first_call = threading.Event(), threading.Event()
    calls = []

    def fn(i):
        calls.append(i)
        if i == 0 and not first_call.is_set():
            first_call.set()
            release.wait(60)
            return "stalled"
        return f"task {i}"

    work = SharedWork(fn, 3)
    helper = threading.Thread(target=work.run)
    helper.start()
    first_call.wait(60)  # the helper holds task 0
    results = work.run_and_wait()  # would wait 60 s for the helper without the re-run
    stalled_still = not release.is_set()
    release.set()
    helper.join()
    assert stalled_still
    assert results == ["task 0", "task 1", "task 2"]
    assert calls.count(0) == 2


def test_an_error_in_a_shared_task_reaches_the_caller():
    def fn(i):
        if i == 2:
            raise ValueError("layer 2 failed")
        return i

    with pytest.raises(ValueError, match="layer 2 failed"):
        SharedWork(fn, 4).run_and_wait()
