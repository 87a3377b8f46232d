"""Helper threads that start on another CPU than the thread that wakes them, and work they share.

Motion correction and ranking split a volume's work between the calling thread and a helper. A
helper idles for most of a TR, and Linux wakes a thread near its waker: measured on these 2-vCPU
machines, a helper woken after an idle second waited 1-4 ms on the caller's CPU, runnable (the
``run_delay`` of ``/proc/<pid>/task/<tid>/schedstat``), while the other CPU idled, so the two
halves ran one after the other. :class:`HelperThreads` lets an idle helper onto every CPU but the
caller's just before waking it, and the helper lets itself back onto all of them as it starts:
the scheduler still balances as it likes, it only cannot queue the helper behind its waker.

The same happens the other way round while the two share a volume's work: a W1 run traced with
``sched_switch`` events showed the helper, releasing the GIL the caller waited for, wake the
caller onto the helper's own CPU, where the two took turns for 5-13 ms while the caller's CPU
idled (the wake-up passed over the idle vCPU, which only a later balancing pass found).
:meth:`HelperThreads.alongside` therefore holds the caller on its CPU and the helpers on the
others until the shared work is done; :class:`SharedWork` reruns a task whose thread was held
up there.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

# Where the calling thread runs (glibc, through the vDSO); None where there is no such call.
_getcpu = getattr(ctypes.CDLL(None), "sched_getcpu", None) if hasattr(os, "sched_setaffinity") else None


class HelperThreads(ThreadPoolExecutor):
    """A :class:`~concurrent.futures.ThreadPoolExecutor` whose idle threads are woken off the caller's CPU.

    Parameters
    ----------
    workers : int
        Number of threads.
    name : str
        Their name prefix.

    Notes
    -----
    The helpers run on the CPUs the thread that made the pool could use. They are placed only
    where Linux lets a thread name its CPUs (elsewhere this is a plain pool), only with more than
    one such CPU, and only while waiting for work (a busy helper is left alone), except in
    :meth:`alongside`.
    """

    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self._cpus = os.sched_getaffinity(0) if _getcpu is not None else set()
        self._idle: dict[int, bool] = {}  # native thread id -> waiting for work
        self._lock = threading.Lock()
        super().__init__(workers, thread_name_prefix=name, initializer=self._started)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; an idle helper will wake on a CPU other than this one."""
        return super().submit(self._run, self._wake_elsewhere(), False, fn, *args, **kwargs)

    @contextmanager
    def alongside(self, *fns: Callable[[], object]) -> Iterator[list[Future]]:
        """Start each of ``fns`` on a helper; this thread and the helpers stay apart until the block ends.

        This thread stays on the CPU it is on and the helpers on the others, so that neither can
        wake the other onto its own CPU while they work side by side (module notes). Affinity is
        restored as the block ends.

        Parameters
        ----------
        *fns : callable
            Called without arguments, one per helper task.

        Yields
        ------
        list of concurrent.futures.Future
            One per function.
        """
        mine = os.sched_getaffinity(0) if len(self._cpus) > 1 else None
        if mine is not None:
            _pin(0, {_getcpu()})
        submit = super().submit
        try:
            yield [submit(self._run, self._wake_elsewhere(), True, fn) for fn in fns]
        finally:
            if mine is not None:
                _pin(0, mine)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As :meth:`ThreadPoolExecutor.shutdown`; the helpers' thread ids are forgotten first."""
        with self._lock:
            self._idle.clear()  # an ended thread's id may be reused by another thread or process
        super().shutdown(wait, cancel_futures=cancel_futures)

    def _started(self) -> None:
        with self._lock:
            self._idle[threading.get_native_id()] = True

    def _wake_elsewhere(self) -> set[int]:
        # The CPUs other than this thread's, where idle helpers are let wake; empty if not placed.
        others = self._cpus - {_getcpu()} if len(self._cpus) > 1 else set()
        if others:
            with self._lock:
                for tid, idle in self._idle.items():
                    if idle:
                        _pin(tid, others)
        return others

    def _run(self, others: set[int], stay: bool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        tid = threading.get_native_id()
        with self._lock:
            self._idle[tid] = False
        if others:
            # Placed: from here on the scheduler's to move, or (``stay``) kept off the caller's CPU;
            # a helper started by this task inherited the caller's CPUs and is placed only here.
            _pin(0, others if stay else self._cpus)
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._idle[tid] = True


def _pin(tid: int, cpus: set[int]) -> None:
    # A thread that has ended, or CPUs taken away since (a changed cpuset), only lose the placement.
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:
        pass


class SharedWork:
    """``fn(0) ... fn(n - 1)``, shared by every thread that calls :meth:`run`.

    A thread takes the next task not yet started. When none is left, it waits up to 1.5 times the
    longest task so far for the others to finish, then runs again the unfinished task that the
    fewest threads are running (before any task has finished there is nothing to judge a stall
    by, and it only waits). The first result of each task is kept: ``fn`` must give the same
    answer every time (ranking's do: exact integer sums, a fixed re-scoring order).
    """

    def __init__(self, fn: Callable[[int], object], n: int) -> None:
        self.fn = fn
        self.changed = threading.Condition()  # guards the state below; notified as tasks end
        self.results: list[object] = [None] * n
        self.finished = [False] * n
        self.running = [0] * n
        self.next = 0
        self.longest = 0.0
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        """Whether every task has a result, or one has failed."""
        return self.error is not None or all(self.finished)

    def _take(self) -> int | None:
        with self.changed:
            while not self.done:
                if self.next < len(self.results):
                    i, self.next = self.next, self.next + 1
                elif not self.longest:  # no task has ended: nothing to judge a stall by
                    self.changed.wait()
                    continue
                elif self.changed.wait(1.5 * self.longest) or self.done:  # one ended: look again
                    continue
                else:
                    unfinished = [j for j, ended in enumerate(self.finished) if not ended]
                    i = min(unfinished, key=self.running.__getitem__)
                self.running[i] += 1
                return i
            return None

    def run(self) -> None:
        """Run tasks until every one has a result (or one has failed)."""
        while (i := self._take()) is not None:
            t0 = time.perf_counter()
            try:
                result = self.fn(i)
            except BaseException as err:  # handed to the thread that waits
                with self.changed:
                    self.error = self.error or err
                    self.changed.notify_all()
                return
            with self.changed:
                self.longest = max(self.longest, time.perf_counter() - t0)
                self.running[i] -= 1
                if not self.finished[i]:
                    self.results[i], self.finished[i] = result, True
                self.changed.notify_all()

    def run_and_wait(self) -> list:
        """:meth:`run` on this thread, then wait for the others; the results in task order."""
        self.run()
        with self.changed:
            self.changed.wait_for(lambda: self.done)
        if self.error is not None:
            raise self.error
        return self.results


def share(pool: HelperThreads | None, fn: Callable[[int], object], n: int) -> list:
    """``[fn(0), ..., fn(n - 1)]``, shared (:class:`SharedWork`) by this thread and every helper of ``pool``.

    The helpers run :meth:`HelperThreads.alongside`; without a pool this thread runs every task.
    ``fn`` must give the same answer, and leave the same bits wherever it writes, every time it
    is called with the same ``i`` (a stalled task is run again).
    """
    work = SharedWork(fn, n)
    with pool.alongside(*[work.run] * pool.workers) if pool else nullcontext():
        return work.run_and_wait()
