"""The bridge: watch a scanner's export folder and send each volume as soon as it is complete.

Events come from the operating system (inotify, through watchdog), or from watchdog's polling
observer on network shares where events do not arrive. A file that cannot be read yet (still being
written) is retried on its next event and every ``retry_s``; one that stays incomplete for
``give_up_s`` is reported and dropped, and the series goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from rtdecode.errors import VolumeError
from rtdecode.scanner.assemble import Assembler
from rtdecode.scanner.clock import Dispatch, ScannerClock
from rtdecode.scanner.readers import ScanVolume
from rtdecode.volume import Volume

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, q: queue.Queue) -> None:
        self.q = q

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.q.put(Path(event.src_path))

    on_modified = on_created
    on_closed = on_created

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.q.put(Path(event.dest_path))


class FolderBridge:
    """Watch ``folder`` and hand complete volumes to ``send``.

    Parameters
    ----------
    folder : str or Path
        The export folder.
    send : callable
        Called with each :class:`~rtdecode.volume.Volume`, in order of completion.
    clock : ScannerClock or None
        Makes the volumes and their time stamps (session, TR, scanner clock offset, triggers);
        default: session ``session``, the headers' TR, an estimated offset.
    poll : bool
        Poll the folder instead of relying on file-system events (network shares).
    give_up_s : float
        How long a file may stay incomplete before it is reported and dropped.
    retry_s : float
        How often incomplete files are retried without a new event.
    include_existing : bool
        Also read the files already in the folder when the bridge starts.
    """

    def __init__(
        self,
        folder: str | Path,
        send: Callable[[Volume], None],
        clock: ScannerClock | None = None,
        poll: bool = False,
        give_up_s: float = 10.0,
        retry_s: float = 0.05,
        include_existing: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VolumeError(f"export folder {str(self.folder)!r} does not exist")
        self.dispatch = Dispatch(send, clock)
        self.poll = poll
        self.give_up_s = give_up_s
        self.retry_s = retry_s
        self.include_existing = include_existing
        self.assembler = Assembler()
        self.failed: list[str] = []
        self._queue: queue.Queue[Path] = queue.Queue()
        self._waiting: dict[Path, float] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe from another thread or a signal handler."""
        self._stop.set()

    def run(
        self,
        max_volumes: int | None = None,
        idle_exit_s: float | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> int:
        """Watch until stopped, ``max_volumes`` were sent, or nothing happened for ``idle_exit_s``.

        ``on_ready`` is called once the watcher is running: files written after it are seen.

        Returns
        -------
        int
            Volumes sent.
        """
        observer = PollingObserver(timeout=0.1) if self.poll else Observer()
        observer.schedule(_Handler(self._queue), str(self.folder), recursive=False)
        observer.start()
        if on_ready is not None:
            on_ready()
        if self.include_existing:
            for p in sorted(self.folder.iterdir()):
                self._queue.put(p)
        last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                if max_volumes is not None and self.dispatch.n_sent >= max_volumes:
                    break
                try:
                    batch = [self._queue.get(timeout=self.retry_s)]
                    # Everything else already seen goes with it: a poll reports a burst of files in
                    # no particular order, and the volumes must leave in the headers' order.
                    while True:
                        try:
                            batch.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                    self._send_in_order(batch)
                    last_activity = time.monotonic()
                except queue.Empty:
                    self._send_in_order(list(self._waiting))
                    if (
                        idle_exit_s is not None
                        and not self._waiting
                        and time.monotonic() - last_activity > idle_exit_s
                    ):
                        break
        finally:
            observer.stop()
            observer.join(5)
        return self.dispatch.n_sent

    def _send_in_order(self, paths: list[Path]) -> None:
        volumes = [sv for path in dict.fromkeys(paths) for sv in self._try(path)]
        for sv, complete_ns in sorted(volumes, key=lambda v: (v[0].series, v[0].seq)):
            self.dispatch(sv, complete_ns)

    def _try(self, path: Path) -> list[tuple[ScanVolume, int]]:
        if not path.is_file():
            self._waiting.pop(path, None)
            return []
        complete_ns = time.monotonic_ns()  # reading and assembling it is rtdecode's time, not the export's
        try:
            volumes = self.assembler.add(path)
        except VolumeError as err:
            first = self._waiting.setdefault(path, time.monotonic())
            if time.monotonic() - first > self.give_up_s:
                del self._waiting[path]
                self.failed.append(str(path))
                log.error("gave up on %s after %.0f s: %s", path, self.give_up_s, err)
            return []
        self._waiting.pop(path, None)
        return [(sv, complete_ns) for sv in volumes]
